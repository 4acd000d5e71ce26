"""The report's privacy section: epsilon over training and the ledger table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomx.privacy.ledger import read_ledger


def privacy_sections(run_dir: Path) -> list[dict[str, Any]]:
    """One section for a DP run (it has `privacy.json`), none otherwise."""
    ledger = read_ledger(run_dir)
    if ledger is None:
        return []
    rows = ledger["epochs"]
    text = (f"DP-SGD (Opacus): target epsilon {ledger['target_epsilon']:g} at delta {ledger['delta']:g}, "
            f"calibrated under the {ledger['accountant'].upper()} accountant; spent: epsilon "
            f"{ledger['epsilon_rdp']:.3g} (RDP), {ledger['epsilon_prv']:.3g} (PRV) after {ledger['steps']} steps. "
            f"Noise multiplier {ledger['noise_multiplier']:.4g}, per-sample gradients clipped to "
            f"{ledger['max_grad_norm']:g}, Poisson sample rate {ledger['sample_rate']:.4g} "
            f"(expected batch {ledger['expected_batch_size']} of {ledger['training_samples']}).")  # fmt: skip
    table = {
        "header": ["epoch", "steps", "epsilon (RDP)", "epsilon (PRV)"],
        "rows": [[r["epoch"], r["steps"], f"{r['epsilon_rdp']:.4g}", f"{r['epsilon_prv']:.4g}"] for r in rows],
        "numeric": True,
    }
    return [{"title": "Differential privacy", "text": text, "table": table, "figures": [_figure(rows, ledger)]}]


def _figure(rows: list[dict[str, Any]], ledger: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure  # the report's renderer already depends on it

    fig = Figure(figsize=(4.5, 3.0))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["epsilon_rdp"] for r in rows], marker="o", label="RDP")
    ax.plot(epochs, [r["epsilon_prv"] for r in rows], marker="s", label="PRV")
    ax.axhline(ledger["target_epsilon"], color="grey", linestyle="--", label="target")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"epsilon (delta {ledger['delta']:g})")
    ax.legend()
    fig.tight_layout()
    return fig

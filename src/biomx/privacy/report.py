"""The report's privacy sections: epsilon over training and the ledger table; for a federated
run, one row per site (`privacy_sites.json`, written by the federation's server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomx.privacy.ledger import read_ledger
from biomx.runs import read_json

SITES = "privacy_sites.json"  # a federated run's per-site ledgers (biomx.federated.rounds)


def privacy_sections(run_dir: Path) -> list[dict[str, Any]]:
    """One section for a DP run (it has `privacy.json`), one for a federation whose sites trained
    with DP (`privacy_sites.json`), none otherwise."""
    return [*_run_section(run_dir), *site_sections(run_dir)]


def _run_section(run_dir: Path) -> list[dict[str, Any]]:
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
    others = int(ledger.get("runs_on_same_data", 1)) - 1
    if others > 0:
        text += (f" {others} other DP run(s) used the same training data: together with this one they have "
                 f"spent epsilon {ledger['epsilon_total_rdp']:.3g} (RDP), {ledger['epsilon_total_prv']:.3g} (PRV) "
                 f"at delta {ledger['delta']:g} (their accountant histories composed; the privacy budget "
                 "book).")  # fmt: skip
    table = {
        "header": ["epoch", "steps", "epsilon (RDP)", "epsilon (PRV)"],
        "rows": [[r["epoch"], r["steps"], f"{r['epsilon_rdp']:.4g}", f"{r['epsilon_prv']:.4g}"] for r in rows],
        "numeric": True,
    }
    return [{"title": "Differential privacy", "text": text, "table": table, "figures": [_figure(rows, ledger)]}]


def site_sections(run_dir: Path) -> list[dict[str, Any]]:
    """A federated run whose sites trained with DP: each site's budget, spent over the rounds."""
    path = Path(run_dir) / SITES
    if not path.is_file():
        return []
    book = read_json(path)
    sites = book.get("sites") or {}
    if not sites:
        return []
    text = ("Each site trains with DP-SGD on its own rows; its noise is calibrated once for all its steps "
            "(rounds x local epochs x steps per epoch), so the whole federation spends at most the target "
            "epsilon per site. The global model is a post-processing of the sites' updates: each site's "
            "patients are protected at that site's epsilon.")  # fmt: skip
    header = ["site", "training rows", "noise multiplier", "sample rate", "steps", "target epsilon", "delta",
              "epsilon (RDP)", "epsilon (PRV)"]  # fmt: skip
    rows = [[name, s.get("training_samples"), f"{s['noise_multiplier']:.4g}", f"{s['sample_rate']:.4g}", s["steps"],
             f"{s['target_epsilon']:g}", f"{s['delta']:g}", f"{s['epsilon_rdp']:.4g}", f"{s['epsilon_prv']:.4g}"]
            for name, s in sorted(sites.items(), key=lambda item: int(item[0]))]  # fmt: skip
    table = {"header": header, "rows": rows, "numeric": True}
    return [{"title": "Differential privacy per site", "text": text, "table": table, "figures": [_site_figure(sites)]}]


def _site_figure(sites: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.0))
    ax = fig.add_subplot()
    for name, s in sorted(sites.items(), key=lambda item: int(item[0])):
        rounds = s.get("rounds", [])
        ax.plot([r["round"] for r in rounds], [r["epsilon_rdp"] for r in rounds], marker="o", label=f"site {name}")
    targets = {s["target_epsilon"] for s in sites.values()}
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (RDP)")
    ax.legend()
    fig.tight_layout()
    return fig


def _figure(rows: list[dict[str, Any]], ledger: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure  # the report's renderer already depends on it

    fig = Figure(figsize=(4.5, 3.0))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["epsilon_rdp"] for r in rows], marker="o", label="RDP")
    ax.plot(epochs, [r["epsilon_prv"] for r in rows], marker="s", label="PRV")
    ax.axhline(ledger["target_epsilon"], color="grey", linestyle="--", label="target")
    if int(ledger.get("runs_on_same_data", 1)) > 1:
        ax.axhline(ledger["epsilon_total_rdp"], color="tab:red", linestyle=":", label="all runs on this data (RDP)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"epsilon (delta {ledger['delta']:g})")
    ax.legend()
    fig.tight_layout()
    return fig

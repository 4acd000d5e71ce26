"""The utility cost of differential privacy on the demo (PneumoniaMNIST chest X-rays, 28x28).

Trains src/biomx/configs/pneumonia_demo.yaml through the normal API (`load_config` +
`biomx.experiment.train`), same split and seed, as:

- "demo (BatchNorm)":        the demo as shipped, no DP;
- "GroupNorm, no DP":        model.args.norm=group (DP-SGD cannot train BatchNorm), no DP;
- "GroupNorm, DP eps=E":     the same with train.privacy {epsilon: E, delta: 1e-5, max_grad_norm: C}
                             (add more epsilons with --epsilon 8 --epsilon 3).

Reported per variant: test AUROC (the run's test_metrics.json), training time (the sum of
metrics.jsonl's per-epoch `time_s`: the training loop only, validation excluded), its ratio to
the GroupNorm run without DP, and for DP runs the ledger's final epsilon under RDP and PRV and
the noise multiplier. The issue's target: test AUROC >= 0.90 at epsilon <= 8 (delta 1e-5).

    .venv/bin/python benchmarks/dp_utility.py [--epsilon 8] [--max-grad-norm 1.0] [--threads 2]
        [--runs-dir DIR] [--set train.epochs=12 ...] [--json benchmarks/results/dp_utility.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from biomx.config import load_config
from biomx.experiment import train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "biomx" / "configs" / "pneumonia_demo.yaml"


def run(name: str, overrides: list[str], runs_dir: Path) -> dict:
    cfg = load_config(DEMO, [*overrides, f"output.dir={runs_dir}", f"output.name={name}", "train.progress=false",
                             "output.tensorboard=false", "eval.explain=0"])  # fmt: skip
    started = time.perf_counter()
    run_dir = train(cfg)
    wall = time.perf_counter() - started
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = {"variant": name, "overrides": overrides, "test_auroc": metrics["metrics"]["auroc"]["value"],
           "test_auroc_ci": [metrics["metrics"]["auroc"].get(k) for k in ("ci_low", "ci_high")],
           "train_s": sum(e["time_s"] for e in epochs), "wall_s": wall, "epochs": len(epochs)}  # fmt: skip
    ledger = run_dir / "privacy.json"
    if ledger.is_file():
        spent = json.loads(ledger.read_text())
        row.update({k: spent[k] for k in ("epsilon_rdp", "epsilon_prv", "noise_multiplier", "sample_rate", "steps")})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, action="append")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", type=Path)
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dp_utility.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="dp-utility-"))
    variants = [("demo-batchnorm", []), ("groupnorm-no-dp", ["model.args.norm=group"])]
    for eps in args.epsilon or [8.0]:
        privacy = f"{{epsilon: {eps}, delta: 1.0e-5, max_grad_norm: {args.max_grad_norm}, baseline: false}}"
        variants.append((f"groupnorm-dp-eps{eps:g}", ["model.args.norm=group", f"train.privacy={privacy}"]))
    rows = [run(name, [*args.set, *extra], runs_dir) for name, extra in variants]
    base = next(r for r in rows if r["variant"] == "groupnorm-no-dp")["train_s"]
    print(f"{'variant':<24} {'test AUROC':>10} {'train s':>8} {'x no-DP':>8} {'eps RDP':>8} {'eps PRV':>8} {'sigma':>6}")
    for r in rows:
        r["overhead"] = r["train_s"] / base
        dp = (f"{r['epsilon_rdp']:>8.2f} {r['epsilon_prv']:>8.2f} {r['noise_multiplier']:>6.3f}"
              if "epsilon_rdp" in r else "")  # fmt: skip
        print(f"{r['variant']:<24} {r['test_auroc']:>10.4f} {r['train_s']:>8.1f} {r['overhead']:>8.2f} {dp}")
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "extra_overrides": args.set, "rows": rows}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Tabular and patient-history training throughput: biomx's Trainer vs a bare PyTorch loop, for
`tabular_mlp`, `ft_transformer`, `history_gru` and `history_transformer`.

    .venv/bin/python benchmarks/tabular_throughput.py [--rows 20000] [--rounds 5] [--threads 1] [--models tabular_mlp ft_transformer]
    .venv/bin/python benchmarks/tabular_throughput.py --modality history [--rows 20000] [--threads 1]

The table: GBSG2 as `biomx datasets --name gbsg2 --export DIR` writes it (686 breast cancer
patients, 5 numeric and 3 categorical features, time and event), resampled with replacement
to --rows rows (unique ids) so that an epoch is long enough to time. The experiment is
`examples/gbsg2_survival.yaml` (stratified 70/15/15 split, DeepSurv-style Cox loss with Efron
ties, AdamW, batch 64, grad clipping 1.0), with `model.name` set to each model: tabular_mlp
keeps the example's args (width 64, depth 2, dropout 0.2, batch norm), ft_transformer gets its
defaults (d_token 64, depth 3, heads 8).

- biomx: `biomx.experiment.prepare` (read, type, encode, split: not timed), then the Trainer
  exactly as `biomx train` builds it (`experiment._trainer`: TabularDataset served by the
  Trainer's DataLoader and ResumableSampler, `collate_batch`, validation data attached), one
  epoch; the Trainer's own `samples_per_s` (the training loop only: validation runs after the
  clock stops).
- bare: the same model class and args (fresh, same seed), the same optimizer, cosine schedule,
  loss and grad clipping, over the same pre-encoded training rows already in one float tensor:
  one `randperm` per epoch, then slices of it, no DataLoader, no `loss.item()`; one epoch of
  the same number of full batches (the Trainer drops the last partial batch too).

One untimed warm-up epoch per side, then --rounds alternating pairs (biomx, bare, ...) in one
process, so load from other processes hits both; the estimate is the median of the paired
per-round ratios (target >= 0.90). Each side also records batch / median step interval, which
a burst of load on the shared machine does not throw off.

--modality history times the patient-history models the same way: `history_gru` and
`history_transformer` on the AIDS trial as `biomx datasets --name aids --export DIR` writes it
(467 patients, CD4 at 0, 2, 6, 12, 18 months), patients resampled with replacement to --rows
patients (fresh ids, each copy with all its visits), trained as `examples/aids_history.yaml`
(landmark 6 months, so only the patients alive then and their visits up to month 6: 3 visit
blocks per row; stratified 60/20/20, Cox loss, AdamW, batch 64). history_gru keeps the example's
args (width 32, depth 1, GRU, dropout 0.1); history_transformer gets the args of
docs/history.md's measured table (width 32, depth 1, 4 heads, dropout 0.1). The encoded history
is one flat float row per patient (covariates, then the visit blocks), held in the same
RowTensorDataset as a table, so the bare loop is the same.

--threads 1 is what the README's numbers use: with torch's default of one thread per core and
another process on one of the cores, the MLP's many tiny parallel ops wait for the busy core
and both sides drop 20-60x, so the ratio measures the machine rather than biomx.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from biomx.config import ExperimentConfig, load_config
from biomx.engine import logging as biomx_logging
from biomx.engine.optim import build_optimizer, build_scheduler
from biomx.engine.runtime import seed_everything
from biomx.experiment import Prepared, _trainer, prepare
from biomx.modalities.history.starter_data import export_dataset as export_history
from biomx.modalities.tabular.starter_data import export_dataset
from biomx.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gbsg2_survival.yaml"
HISTORY_EXAMPLE = ROOT / "examples" / "aids_history.yaml"
MODELS = {"tabular": ["tabular_mlp", "ft_transformer"], "history": ["history_gru", "history_transformer"]}
TARGET = 0.90
NOISY = 1.15  # warn when one side's rounds differ by more than 15%


def make_table(rows: int, folder: Path, seed: int = 0) -> Path:
    """GBSG2 exported by biomx, resampled with replacement to `rows` rows with fresh ids."""
    export_dataset("gbsg2", folder)
    with open(folder / "gbsg2.csv", newline="") as f:
        header, *body = list(csv.reader(f))
    picks = np.random.default_rng(seed).integers(0, len(body), rows)
    path = folder / f"gbsg2_{rows}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for k, i in enumerate(picks):
            writer.writerow([f"r{k:07d}", *body[i][1:]])  # column 0 is the id
    return path


def make_histories(patients: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The AIDS histories exported by biomx, patients resampled with replacement to `patients`
    (fresh ids; each copy keeps all its visits): (history table, baseline table)."""
    export_history("aids", folder)
    tables = {}
    for part in ("history", "baseline"):
        with open(folder / f"aids_{part}.csv", newline="") as f:
            header, *body = list(csv.reader(f))
        tables[part] = (header, body)
    (h_header, h_body), (b_header, b_body) = tables["history"], tables["baseline"]
    visits: dict[str, list[list[str]]] = {}
    for row in h_body:  # column 0 is the id in both tables
        visits.setdefault(row[0], []).append(row[1:])
    picks = np.random.default_rng(seed).integers(0, len(b_body), patients)
    history, baseline = folder / f"aids_history_{patients}.csv", folder / f"aids_baseline_{patients}.csv"
    with open(history, "w", newline="") as fh, open(baseline, "w", newline="") as fb:
        wh, wb = csv.writer(fh), csv.writer(fb)
        wh.writerow(h_header)
        wb.writerow(b_header)
        for k, i in enumerate(picks):
            ident = f"p{k:07d}"
            wb.writerow([ident, *b_body[i][1:]])
            wh.writerows([ident, *v] for v in visits[b_body[i][0]])
    return history, baseline


def history_config(history: Path, baseline: Path, model: str, batch_size: int) -> ExperimentConfig:
    # The example's args are GRU args; the transformer gets those of docs/history.md's table.
    args = [] if model == "history_gru" else ["model.args={width: 32, depth: 1, heads: 4, dropout: 0.1}"]
    return load_config(HISTORY_EXAMPLE, [
        f"data.path={history}", f"data.history.baseline={baseline}", f"model.name={model}", *args,
        "train.epochs=1", "train.progress=false", "train.device=cpu", f"train.batch_size={batch_size}",
    ])  # fmt: skip


def config(table: Path, cache: Path, model: str, batch_size: int) -> ExperimentConfig:
    # The example's args are MLP args; the FT-Transformer takes its own defaults.
    args = [] if model == "tabular_mlp" else ["model.args={}"]
    return load_config(EXAMPLE, [
        f"data.path={table}", f"data.tabular.cache_dir={cache}", f"model.name={model}", *args,
        "train.epochs=1", "train.progress=false", "train.device=cpu", f"train.batch_size={batch_size}",
    ])  # fmt: skip


def run_biomx(p: Prepared) -> tuple[float, float]:
    """(the Trainer's samples/s for one epoch, batch / median interval between its steps)."""
    trainer = _trainer(p, run_dir=None)
    stamps: list[float] = []
    trainer.step_hook = lambda _: stamps.append(time.perf_counter())
    rate = trainer.fit()[-1]["samples_per_s"]
    steps = np.diff(stamps)
    return float(rate), p.cfg.train.batch_size / float(np.median(steps))


def bare_runner(p: Prepared) -> Callable[[], tuple[float, float]]:
    """A bare loop over the training rows of the encoded matrix biomx itself trains on."""
    cfg, train = p.cfg.train, p.datasets["train"]
    rows = torch.as_tensor(train.index)
    x, y = train.x[rows].contiguous(), train.targets[rows].contiguous()
    batch, n_batches = cfg.batch_size, len(rows) // cfg.batch_size

    def run() -> tuple[float, float]:
        seed_everything(cfg.seed)  # as experiment._trainer does before building the model
        model = build_model(p.cfg.model.name, **p.info["model"]["args"])
        optimizer = build_optimizer(model, cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.schedule, n_batches, n_batches)
        model.train()
        stamps = [time.perf_counter()]
        order = torch.randperm(len(x))
        xs, ys = x[order], y[order]  # one gather per epoch, then views
        for i in range(n_batches):
            loss = p.task.loss(
                model(xs[i * batch : (i + 1) * batch]), ys[i * batch : (i + 1) * batch]
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            stamps.append(time.perf_counter())
        return n_batches * batch / (stamps[-1] - stamps[0]), batch / float(
            np.median(np.diff(stamps))
        )

    return run


def measure(p: Prepared, rounds: int) -> dict:
    bare = bare_runner(p)
    run_biomx(p), bare()  # warm-up: allocator, oneDNN primitives, AdamW code paths; not timed
    ours, plain, ours_step, plain_step = [], [], [], []
    for k in range(rounds):
        rate, step = run_biomx(p)
        ours.append(rate)
        ours_step.append(step)
        rate, step = bare()
        plain.append(rate)
        plain_step.append(step)
        print(f"  round {k + 1}: biomx {ours[-1]:8.0f}  bare {plain[-1]:8.0f} samples/s  "
              f"ratio {ours[-1] / plain[-1]:.3f}   (median step: {ours_step[-1]:.0f} vs "
              f"{plain_step[-1]:.0f})", flush=True)  # fmt: skip
    # Each pair ran back to back: the median of the paired ratios is least disturbed by load.
    ratio = statistics.median(a / b for a, b in zip(ours, plain, strict=True))
    step_ratio = statistics.median(ours_step) / statistics.median(plain_step)
    noisy = any(max(v) > NOISY * min(v) for v in (ours, plain))
    return {"biomx": ours, "bare": plain, "biomx_median": statistics.median(ours),
            "bare_median": statistics.median(plain), "ratio": ratio, "step_biomx": ours_step,
            "step_bare": plain_step, "step_ratio": step_ratio, "noisy": noisy}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=20_000,
        help="rows of the resampled table, or patients with --modality history (default 20000)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="biomx/bare pairs per model (default 5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="batch size (default 64, the example's)"
    )
    parser.add_argument("--modality", choices=list(MODELS), default="tabular",
                        help="tabular: GBSG2 rows (default); history: AIDS patient histories")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=None, choices=[m for ms in MODELS.values() for m in ms],
                        help="default: both models of --modality")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own, one per core)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.rounds < 1 or args.batch_size < 2:
        parser.error("needs --rows >= 1000, --rounds >= 1, --batch-size >= 2")
    models = args.models or MODELS[args.modality]
    if any(m not in MODELS[args.modality] for m in models):
        parser.error(f"--modality {args.modality} takes --models {' '.join(MODELS[args.modality])}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    quiet, biomx_logging.console.quiet = biomx_logging.console.quiet, True  # no per-epoch lines
    results: dict = {"modality": args.modality, "rows": args.rows, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "models": {}}  # fmt: skip
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.modality == "tabular":
                table = make_table(args.rows, Path(tmp))
            else:
                history, baseline = make_histories(args.rows, Path(tmp))
            for name in models:
                if args.modality == "tabular":
                    p = prepare(config(table, Path(tmp) / "cache", name, args.batch_size))
                else:
                    p = prepare(history_config(history, baseline, name, args.batch_size))
                n_train = len(p.datasets["train"])
                print(f"{name} {p.info['model']['args']}: {n_train} training rows of {len(p.targets)} x "
                      f"{p.datasets['train'].x.shape[1]} encoded columns, batch {args.batch_size}, "
                      f"{n_train // args.batch_size} steps/epoch, fp32 CPU, {torch.get_num_threads()} threads",
                      flush=True)  # fmt: skip
                r = measure(p, args.rounds)
                results["models"][name] = r
                print(f"{name}: biomx {r['biomx_median']:.0f}, bare {r['bare_median']:.0f} samples/s "
                      f"(medians), median paired ratio {r['ratio']:.3f} (target >= {TARGET}); "
                      f"step cross-check {r['step_ratio']:.3f}"
                      + ("  [rounds differ by > 15%: the machine was busy]" if r["noisy"] else ""),
                      flush=True)  # fmt: skip
    finally:
        biomx_logging.console.quiet = quiet
    results["elapsed_s"] = time.perf_counter() - started
    print(f"[{results['elapsed_s']:.0f} s]")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

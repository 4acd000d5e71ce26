"""Batch-prediction speed of an exported run on CPU: torch eager vs ONNX Runtime fp32 vs int8.

Three real runs are trained first through the normal API (`biomx.config.load_config` +
`biomx.experiment.train`, --epochs epochs each, on real data shipped with biomx):

- image:    the demo's PneumoniaMNIST X-ray classifier (src/biomx/configs/pneumonia_demo.yaml,
            small_cnn, 28x28 grey);
- sequence: examples/oct4_vs_mafk.yaml (DeepSEA-style CNN on 200 bp DNA windows,
            tests/data/dna_tf_binding);
- tabular:  examples/breast_cancer_tabular.yaml (MLP on the 30 Wisconsin features, the CSV
            written by `biomx datasets --name breast_cancer --export`; no LightGBM baseline).

Each run is exported with `biomx.export.run_export.export_run` (ONNX, torch.export, int8; each
checked against PyTorch), and the checks it wrote into RUN/export/model.json are reported.

Then, per run, the test split's raw graph inputs (`modality.raw_rows` of the test rows, repeated
to at least --rows rows) are predicted by three engines from `biomx.export.engines.open_engine`:
(a) "torch" (the RunGraph in eager PyTorch under torch.no_grad), (b) "onnx" (model.onnx in ONNX
Runtime), (c) "int8" (model.int8.onnx in ONNX Runtime). Every engine splits the rows into batches
of 256 (`engines.CHUNK`) itself and returns numpy arrays, so the timing covers what
`biomx predict --engine` pays per row (tensor/array conversion included, file reading excluded).
All engines get the same thread count: torch.set_num_threads(N) and, for ONNX Runtime, a
session made here with intra_op_num_threads=N and inter_op_num_threads=1 (the engine's own session
uses ONNX Runtime's default, one thread per physical core), graph optimisation ORT_ENABLE_ALL.
Beside them, "onnx-nospin" and "int8-nospin" run the same files in sessions with
session.intra_op.allow_spinning=0 (idle pool threads sleep rather than spin), which matters on a
machine shared with other processes.

Each engine is warmed up (2 passes), then --rounds timed rounds alternate the engines (the order
rotating every round) so machine noise hits every engine alike. Reported: samples/s medians, the
ratios onnx/torch and int8/torch (and the no-spin ones; the issue's target: ONNX Runtime >= 1.5x torch eager), and
single-sample latency (batch 1, median ms over --latency-calls calls per round, all rounds).

    .venv/bin/python benchmarks/export_speed.py [--threads 2] [--rounds 5] [--epochs 2]
        [--runs-dir DIR] [--reuse] [--json benchmarks/results/export_speed.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biomx.config import load_config
from biomx.engine import logging as biomx_logging
from biomx.experiment import prepare, train
from biomx.export import engines
from biomx.export.run_export import export_run

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "onnx", "int8")
# The same ONNX files in sessions whose idle pool threads sleep instead of spinning
# (session.intra_op.allow_spinning=0): on a machine shared with other processes a spinning pool
# thread steals the core the working one needs. Measured beside the engines to show the effect.
NO_SPIN = {"onnx-nospin": "onnx", "int8-nospin": "int8"}
WARMUP = 2
COMMON = ["eval.bootstrap=0", "eval.explain=0", "train.progress=false", "train.seed=0"]


def run_specs(data_dir: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (config file, overrides beyond the common ones)."""
    return {
        "image": (ROOT / "src/biomx/configs/pneumonia_demo.yaml", []),
        "sequence": (ROOT / "examples/oct4_vs_mafk.yaml",
                     [f"data.path={ROOT / 'tests/data/dna_tf_binding'}", "train.early_stopping=null"]),
        "tabular": (ROOT / "examples/breast_cancer_tabular.yaml",
                    [f"data.path={data_dir / 'breast_cancer.csv'}", "data.tabular.baseline=false"]),
    }


def ensure_run(name: str, config: Path, overrides: list[str], runs_dir: Path, epochs: int,
               reuse: bool) -> tuple[Path, float | None]:
    """The run RUNS/<name> (trained here unless --reuse finds it); seconds spent training."""
    run_dir = runs_dir / name
    if reuse and (run_dir / "run.json").is_file():
        return run_dir, None
    if (run_dir / "run.json").is_file():
        raise SystemExit(f"{run_dir} already holds a run: pass --reuse, or another --runs-dir")
    cfg = load_config(config, [*COMMON, *overrides, f"train.epochs={epochs}",
                               f"output.dir={runs_dir}", f"output.name={name}"])
    start = time.perf_counter()
    console = biomx_logging.console
    quiet, console.quiet = console.quiet, True
    try:
        train(cfg)
    finally:
        console.quiet = quiet
    return run_dir, time.perf_counter() - start


def test_inputs(run_dir: Path, rows: int) -> tuple[torch.Tensor, int]:
    """(the test split's raw graph inputs repeated to >= rows rows, the number of test rows)."""
    loaded = engines.open_engine(run_dir, "torch").loaded
    p = prepare(load_config(run_dir / "config.yaml"))
    index = np.asarray(p.splits["test"])
    raw = loaded.modality.raw_rows(loaded.info["preprocessing"], p.data, index)
    reps = -(-rows // len(raw))
    return raw.repeat(reps, *[1] * (raw.dim() - 1)).contiguous(), len(raw)


def ort_session(path: Path, threads: int, spin: bool = True):
    """An ONNX Runtime session with the benchmark's thread count (the engine's own has none)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_engines(run_dir: Path, threads: int) -> dict[str, engines.Engine]:
    found = {}
    for name in ENGINES:
        engine = engines.open_engine(run_dir, name)
        if name != "torch":
            engine.session = ort_session(engines.export_file(run_dir, name), threads)
        found[name] = engine
    for name, file in NO_SPIN.items():
        engine = engines.open_engine(run_dir, file)
        engine.session = ort_session(engines.export_file(run_dir, file), threads, spin=False)
        found[name] = engine
    return found


def timed(engine: engines.Engine, x) -> float:
    start = time.perf_counter()
    engine.run(x)
    return time.perf_counter() - start


def measure(opened: dict[str, engines.Engine], raw: torch.Tensor, rounds: int,
            latency_calls: int) -> dict[str, dict[str, list[float]]]:
    """Per engine: samples/s of every round, and every batch-1 latency (ms)."""
    inputs = {name: raw if name == "torch" else raw.numpy() for name in opened}
    one = {name: x[:1] for name, x in inputs.items()}
    for name, engine in opened.items():  # warm-up: allocations, oneDNN primitives, ORT plans
        for _ in range(WARMUP):
            engine.run(inputs[name])
            engine.run(one[name])
    result = {name: {"samples_per_s": [], "latency_ms": []} for name in opened}
    names = list(opened)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            result[name]["samples_per_s"].append(len(raw) / timed(opened[name], inputs[name]))
            result[name]["latency_ms"] += [timed(opened[name], one[name]) * 1e3 for _ in range(latency_calls)]
        print(f"  round {r + 1}/{rounds}: " + "   ".join(
            f"{name} {result[name]['samples_per_s'][-1]:8.0f}/s" for name in names), flush=True)
    return result


def export_facts(info: dict) -> dict:
    """What the export checked, from model.json."""
    checks = info["checks"]
    facts = {"checked_on": info.get("checked_on"),
             "bytes": {fmt: entry["bytes"] for fmt, entry in info["files"].items()}}
    for fmt, result in checks.items():
        facts[fmt] = {k: result[k] for k in ("max_abs_diff", "tolerance", "label_agreement", "method")
                      if k in result}
    changes = checks.get("int8", {}).get("test_metrics") or {}
    facts["int8_test_metrics"] = changes
    return facts


def speeds(run_dir: Path, raw: torch.Tensor, threads: int, args: argparse.Namespace) -> dict:
    """The engines' throughput and latency at one thread count."""
    torch.set_num_threads(threads)
    print(f"  {threads} thread(s):", flush=True)
    measured = measure(open_engines(run_dir, threads), raw, args.rounds, args.latency_calls)
    medians = {e: statistics.median(m["samples_per_s"]) for e, m in measured.items()}
    return {
        "samples_per_s": {e: m["samples_per_s"] for e, m in measured.items()},
        "median_samples_per_s": medians,
        "ratio_onnx_torch": medians["onnx"] / medians["torch"],
        "ratio_int8_torch": medians["int8"] / medians["torch"],
        "ratio_onnx_nospin_torch": medians["onnx-nospin"] / medians["torch"],
        "ratio_int8_nospin_torch": medians["int8-nospin"] / medians["torch"],
        "latency_ms_batch1": {e: statistics.median(m["latency_ms"]) for e, m in measured.items()},
        "target_met": medians["onnx"] / medians["torch"] >= 1.5,
    }


def bench_run(name: str, run_dir: Path, args: argparse.Namespace, trained_s: float | None) -> dict:
    print(f"{name}: exporting {run_dir}", flush=True)
    torch.set_num_threads(args.threads[0])
    start = time.perf_counter()
    info = export_run(run_dir, echo=lambda line: print("  " + line))
    export_s = time.perf_counter() - start
    raw, n_test = test_inputs(run_dir, args.rows)
    print(f"{name}: {n_test} test rows repeated to {len(raw)}, input {tuple(raw.shape[1:])} "
          f"{str(raw.dtype).removeprefix('torch.')}, batches of {engines.CHUNK}", flush=True)
    return {
        "run": str(run_dir), "model": info.get("model"), "modality": info.get("modality"),
        "members": info.get("members"), "train_s": trained_s, "export_s": export_s,
        "test_rows": n_test, "rows": len(raw), "input_shape": list(raw.shape[1:]),
        "export": export_facts(info),
        "threads": {str(n): speeds(run_dir, raw, n, args) for n in args.threads},
    }


def table(results: dict[str, dict]) -> list[str]:
    lines = ["| model | threads | torch eager (samples/s) | ONNX fp32 | int8 | ONNX/eager | int8/eager | "
             "target ONNX >= 1.5x | batch-1 latency ms (eager / ONNX / int8) | ONNX, int8 without spinning "
             "(samples/s, x eager) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for (name, run), (threads, r) in ((item, t) for item in results.items() for t in item[1]["threads"].items()):
        m, lat = r["median_samples_per_s"], r["latency_ms_batch1"]
        lines.append(f"| {name} ({run['model']}) | {threads} | {m['torch']:.0f} | {m['onnx']:.0f} | {m['int8']:.0f} | "
                     f"{r['ratio_onnx_torch']:.2f}x | {r['ratio_int8_torch']:.2f}x | "
                     f"{'met' if r['target_met'] else 'NOT met'} | "
                     f"{lat['torch']:.2f} / {lat['onnx']:.2f} / {lat['int8']:.2f} | "
                     f"{m['onnx-nospin']:.0f} ({r['ratio_onnx_nospin_torch']:.2f}x), "
                     f"{m['int8-nospin']:.0f} ({r['ratio_int8_nospin_torch']:.2f}x) |")
    lines += ["", "| model | max abs diff ONNX / pt2 / int8 | int8 label agreement | int8 test metric change | "
              "size KiB ONNX / pt2 / int8 |", "|---|---|---:|---|---|"]
    for name, r in results.items():
        e = r["export"]
        diffs = " / ".join(f"{e[f]['max_abs_diff']:.1e}" for f in ("onnx", "torch", "int8"))
        sizes = " / ".join(f"{e['bytes'][f] / 1024:.0f}" for f in ("onnx", "torch", "int8"))
        change = ", ".join(f"{k} {v['fp32']:.4f} -> {v['int8']:.4f} ({v['change']:+.4f})"
                           for k, v in e["int8_test_metrics"].items() if isinstance(v, dict)) or "-"
        agreement = e["int8"].get("label_agreement")
        lines.append(f"| {name} | {diffs} | {agreement:.1%} | {change} ({e['int8'].get('method')}) | {sizes} |"
                     if agreement is not None else f"| {name} | {diffs} | - | {change} | {sizes} |")
    return lines


def machine(threads: list[int], load_start: tuple[float, ...]) -> dict:
    import onnxruntime

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="torch and ONNX Runtime threads; several: each measured in turn (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per engine (default 5)")
    parser.add_argument("--rows", type=int, default=1024, help="rows per timed pass, at least (default 1024)")
    parser.add_argument("--latency-calls", type=int, default=20, help="batch-1 calls per round (default 20)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run (default 2)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the runs live (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="skip training for runs already in --runs-dir")
    parser.add_argument("--only", nargs="+", choices=("image", "sequence", "tabular"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.rounds < 1 or args.rows < 1 or args.epochs < 1:
        parser.error("needs --threads, --rounds, --rows, --epochs >= 1")
    load_start = os.getloadavg()  # 1, 5, 15 min: other processes competing for the cores
    runs_dir = (args.runs_dir or Path(tempfile.mkdtemp(prefix="biomx-export-speed-"))).resolve()
    data_dir = runs_dir / "data"
    if not (data_dir / "breast_cancer.csv").is_file():
        subprocess.run([str(Path(sys.executable).with_name("biomx")), "datasets", "--name", "breast_cancer",
                        "--export", str(data_dir)], check=True)
    print(f"runs in {runs_dir}; threads {args.threads}, torch {torch.__version__}", flush=True)
    results = {}
    for name, (config, overrides) in run_specs(data_dir).items():
        if args.only and name not in args.only:
            continue
        run_dir, trained_s = ensure_run(name, config, overrides, runs_dir, args.epochs, args.reuse)
        results[name] = bench_run(name, run_dir, args, trained_s)
    print()
    for line in table(results):
        print(line)
    result = {"benchmark": "export_speed", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(args.threads, load_start),
              "config": {"rounds": args.rounds, "rows": args.rows, "batch_size": engines.CHUNK,
                         "warmup_passes": WARMUP, "latency_calls_per_round": args.latency_calls,
                         "epochs": args.epochs, "ort_graph_optimization": "ORT_ENABLE_ALL"},
              "target": "ONNX Runtime fp32 >= 1.5x torch eager samples/s (batch prediction)",
              "models": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

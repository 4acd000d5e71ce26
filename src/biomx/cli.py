"""`biomx`: one command, thin subcommands. Parse, call the library, print.

A user mistake (BiomxError) prints one line and exits non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from biomx.argtypes import non_negative_int, positive_int
from biomx.errors import BiomxError, os_error_line
from biomx.modalities import get_modality, modality_names

DEMO_CONFIG = Path(__file__).parent / "configs" / "pneumonia_demo.yaml"


def _cmd_train(args: argparse.Namespace) -> None:
    from biomx.config import load_config
    from biomx.experiment import resume_run, train

    if args.resume:
        if args.config:
            raise BiomxError("train: give a CONFIG or --resume RUN, not both")
        resume_run(args.resume, args.set)
    elif args.config:
        train(load_config(args.config, args.set))
    else:
        raise BiomxError("train: give an experiment CONFIG (YAML) or --resume RUN")


def _cmd_demo(args: argparse.Namespace) -> None:
    from biomx.config import load_config
    from biomx.experiment import train

    overrides = [f"output.dir={args.output_dir}", *args.set]
    run_dir = train(load_config(DEMO_CONFIG, overrides))
    print(f"demo finished: open {run_dir / 'report.html'}")


def _cmd_validate(args: argparse.Namespace) -> None:
    from biomx.config import load_config
    from biomx.experiment import check_config

    check_config(load_config(args.config, args.set))
    print(f"{args.config}: valid")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from biomx.evaluation import summary_line
    from biomx.experiment import evaluate_run

    evaluation = evaluate_run(args.run)
    if evaluation is None:
        print("this run has no test split")
    else:
        print(summary_line(evaluation))


def _cmd_predict(args: argparse.Namespace) -> None:
    import csv

    from biomx.predict import predict_files

    columns = predict_files(args.run, args.inputs, args.output, skip_errors=args.skip_errors,
                            mc_dropout=args.mc_dropout, masks_dir=args.masks)
    failures = columns.pop("_failures")
    if args.output is None:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    else:
        print(f"wrote {len(columns['path'])} predictions to {args.output}", file=sys.stderr)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)


def _cmd_models(args: argparse.Namespace) -> None:
    from biomx.models.registry import list_models, suggest
    from biomx.tasks import task_names

    for flag, value, allowed in [("--modality", args.modality, modality_names()),
                                 ("--task", args.task, task_names())]:  # fmt: skip
        if value is not None and value not in allowed:
            raise BiomxError(f"models {flag}: unknown {flag[2:]} {value!r}{suggest(value, allowed)}; "
                             f"allowed: {', '.join(allowed)}")  # fmt: skip
    rows = list_models(in_channels=args.in_channels, out_dim=args.out_dim, modality=args.modality, task=args.task)
    if not rows:
        print(f"no model serves {args.modality or 'any'} data for {args.task or 'any'} tasks", file=sys.stderr)
        return
    for row in rows:  # () declares no restriction
        row["serves"] = f"{', '.join(row['modalities']) or 'any'}: {', '.join(row['tasks']) or 'any'}"
    width = max(len("modalities: tasks"), *(len(row["serves"]) for row in rows))
    print(f"{'name':<22} {'modalities: tasks':<{width}} {'parameters':>12}  description")
    for row in rows:
        print(f"{row['name']:<22} {row['serves']:<{width}} {row['parameters']:>12,}  {row['description']}")


def _cmd_datasets(args: argparse.Namespace) -> None:
    """List every modality's datasets, or export one (`--name NAME --export DIR`)."""
    from biomx.plugins import suggest

    owners = {}  # dataset name -> the modality that exports it (the first to list it)
    for modality_name in modality_names():
        for dataset in get_modality(modality_name).datasets:
            owners.setdefault(dataset, modality_name)
    if args.export:
        name = args.name or next(iter(owners), "")  # default: the first dataset listed
        if name not in owners:
            raise BiomxError(f"datasets --name: unknown dataset {name!r}{suggest(name, list(owners))}; "
                             f"available: {', '.join(owners)}")  # fmt: skip
        export = get_modality(owners[name]).export_dataset
        print(export(name, args.export, format=args.format, limit=args.limit, overwrite=args.overwrite))
        return
    for modality_name in modality_names():
        datasets = get_modality(modality_name).datasets
        if datasets:
            print(f"{modality_name}:")
        for dataset, description in datasets.items():
            print(f"  {dataset}: {description}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biomx", description="Deep learning for biomedical data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a config value, e.g. --set train.epochs=3 (repeatable)"}  # fmt: skip

    p = sub.add_parser("demo", help="train, evaluate and explain a pneumonia classifier on embedded X-rays")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="run an experiment from a YAML config, or resume a run")
    p.add_argument("config", nargs="?", help="experiment YAML")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("validate", help="check a config without running it")
    p.add_argument("config")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("evaluate", help="evaluate a run's best model on its test split; rewrite the report")
    p.add_argument("run")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict with a run's model(s) on new inputs (CSV out)")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="; ".join(get_modality(n).input_help for n in modality_names()))
    p.add_argument("-o", "--output", help="CSV file to write (default: standard output)")
    p.add_argument("--skip-errors", action="store_true", help="skip unreadable files instead of failing")
    p.add_argument("--mc-dropout", type=non_negative_int, default=None, metavar="N",
                   help="Monte Carlo dropout passes per model (default: as the run was evaluated)")
    p.add_argument("--masks", metavar="DIR", help="segmentation runs: folder for the predicted masks "
                   "(default: <output>_masks beside -o, else ./masks)")  # fmt: skip
    p.set_defaults(func=_cmd_predict)

    for name in modality_names():  # each modality's own commands (e.g. sequence: variants, ism)
        get_modality(name).add_commands(sub)

    p = sub.add_parser("models", help="list the model zoo: what each model serves, its parameter count")
    p.add_argument("--modality", help="only models for this data.modality (e.g. molecule)")
    p.add_argument("--task", help="only models for this task.kind (e.g. regression)")
    p.add_argument("--in-channels", type=positive_int, default=1)
    p.add_argument("--out-dim", type=positive_int, default=2)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("datasets", help="list every modality's datasets, or export one as files")
    p.add_argument("--export", metavar="DIR", help="write the dataset named by --name as files under DIR")
    p.add_argument("--name", default=None, help="the dataset to export, as listed (default: the first listed)")
    p.add_argument("--format", default=None, help="file format, for datasets that offer several (see the listing)")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many samples, where the dataset allows it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files the export writes that already exist (default: refuse, write nothing)")
    p.set_defaults(func=_cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BiomxError as err:
        message = str(err).strip()
        lines = message.splitlines() or [type(err).__name__]
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except OSError as err:  # permission denied, read-only, disk full on a path the user chose
        line = os_error_line(err)
        if line is None or isinstance(err, BrokenPipeError):
            raise
        print(f"error: {line[:400]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python would fail again flushing stdout)
        return 0
    finally:
        from biomx.engine import distributed

        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`biomx`: one command, thin subcommands. Parse, call the library, print.

A user mistake (BiomxError) prints one line and exits non-zero; no traceback.

The parser is built from this module alone: every heavy import (torch, MONAI, the modality
plug-ins) happens inside the command that needs it, so `biomx --help` and `biomx CMD --help`
answer at once. The modalities' own commands (`Modality.add_commands`) are added only when
the command line names a command that is not one of the core ones below (or `biomx commands`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from biomx.argtypes import non_negative_int, positive_int
from biomx.card.cli import add_commands as add_card_commands
from biomx.data.shard_cli import add_commands as add_shards_commands
from biomx.data_audit.cli import add_commands as add_audit_data_commands
from biomx.drift.cli import add_commands as add_drift_commands
from biomx.errors import BiomxError, ConfigError, os_error_line
from biomx.federated.cli import add_commands as add_federate_commands
from biomx.tune.cli import add_commands as add_tune_commands
from biomx.version import __version__

ENGINES = ("torch", "onnx", "int8")  # biomx.export.engines.ENGINES (not imported: --help stays light)
DEMO_CONFIG = Path(__file__).parent / "configs" / "pneumonia_demo.yaml"
EPILOG = ("Each data modality may add commands of its own: `biomx commands` lists every command "
          "(it loads the modalities, so it takes a few seconds).")  # fmt: skip


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
    """Every problem in one pass: the schema's (or, once it holds, the cross-section checks'),
    then a data path that does not exist; one line each."""
    from biomx.config import apply_overrides, load_config, read_yaml
    from biomx.experiment import check_config

    # An unreadable file or a bad --set raises here: then there is nothing more to check.
    problems = _missing_data_path(apply_overrides(read_yaml(args.config), args.set), Path(args.config))
    try:
        check_config(load_config(args.config, args.set))
    except ConfigError as err:
        raise ConfigError("\n".join([str(err), *problems])) from None
    if problems:
        raise ConfigError("\n".join(problems))
    print(f"{args.config}: valid")


def _missing_data_path(raw: dict, config_file: Path) -> list[str]:
    """['data.path: PATH: no such file or folder'] when the data a config reads is not there;
    nothing when the modality or the source is unknown or does not fit (validation names that)
    or the source takes a name, not a path (an embedded dataset)."""
    from biomx.config import MAX_SHOWN, shorten
    from biomx.modalities import get_modality

    data = raw.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data["path"]:
        return []
    try:
        config = get_modality(str(data.get("modality", "image"))).config
    except BiomxError:  # an unknown modality, or one whose extra is not installed: said elsewhere
        return []
    source = data.get("source")
    if (config.sources and source not in config.sources) or source in config.local_sources:
        return []
    path = Path(data["path"]).expanduser()
    if not path.is_absolute():  # relative to the config file's folder, as load_config resolves it
        path = (config_file.resolve().parent / path).resolve()
    if os.path.exists(path):  # False as well for a path the OS refuses (e.g. a name too long)
        return []
    return [f"data.path: {shorten(str(path), 4 * MAX_SHOWN)}: no such file or folder"]


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from biomx.experiment import evaluate_run

    # evaluate_run prints the test summary line itself (as training does): not again here
    if evaluate_run(args.run) is None:
        print("this run has no test split")


def _cmd_predict(args: argparse.Namespace) -> None:
    import csv

    from biomx.predict import predict_files

    columns = predict_files(args.run, args.inputs, args.output, skip_errors=args.skip_errors,
                            mc_dropout=args.mc_dropout, masks_dir=args.masks, engine=args.engine)
    failures = columns.pop("_failures")
    from biomx.engine import distributed as dist

    if not dist.is_main():  # under torchrun rank 0 prints (or wrote) the merged predictions
        return
    if args.output is None:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    else:
        print(f"wrote {len(columns['path'])} predictions to {args.output}", file=sys.stderr)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> None:
    from biomx.export.run_export import export_run

    export_run(args.run, args.out, formats=args.formats, checkpoint=args.checkpoint)


def _cmd_serve(args: argparse.Namespace) -> None:
    from biomx.plugins import import_extra

    server = import_extra("biomx.serve.server", "biomx serve")  # FastAPI and uvicorn: the deploy extra
    server.serve(args.runs, host=args.host, port=args.port, engine=args.engine, max_batch=args.max_batch,
                 max_wait_ms=args.max_wait_ms, timeout_s=args.timeout, max_request_mb=args.max_request_mb,
                 threads=args.threads, drift_log=args.drift_log)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:80]!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text[:80]}")
    return value


def _cmd_models(args: argparse.Namespace) -> None:
    from biomx.modalities import modality_names
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


def _modality_datasets() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """({modality: {dataset: description}} for the modalities that load here, {modality: why
    not} for the others (a package of an extra that is not installed: one line each)."""
    from biomx.modalities import get_modality, modality_names

    listed, unavailable = {}, {}
    for name in modality_names():
        try:
            listed[name] = dict(get_modality(name).datasets)
        except BiomxError as err:  # e.g. the molecule modality needs RDKit: pip install ...
            unavailable[name] = str(err)
    return listed, unavailable


def _cmd_datasets(args: argparse.Namespace) -> None:
    """List every modality's datasets (or the one `--name` names), or export one (`--export DIR`)."""
    export_options = [flag for flag, value in (("--format", args.format), ("--limit", args.limit),
                                               ("--overwrite", args.overwrite)) if value]  # fmt: skip
    if export_options and not args.export:  # they would be silently ignored: refuse them
        raise BiomxError(f"datasets {' and '.join(export_options)}: only with --export DIR "
                         "(add --export DIR to write the dataset; listing takes no such option)")  # fmt: skip
    from biomx.modalities import get_modality
    from biomx.plugins import suggest

    listed, unavailable = _modality_datasets()
    owners: dict[str, str] = {}  # dataset -> the modality that exports it (the first to list it)
    for modality_name, datasets in listed.items():
        for dataset in datasets:
            owners.setdefault(dataset, modality_name)
    name = args.name
    if name is None and args.export:
        name = next(iter(owners), "")  # default: the first dataset listed
    if name is not None and name not in owners:
        also = f" (not loaded here: {'; '.join(unavailable.values())})" if unavailable else ""
        raise BiomxError(f"datasets --name: unknown dataset {name!r}{suggest(name, list(owners))}; "
                         f"available: {', '.join(owners)}{also}")  # fmt: skip
    if args.export:
        export = get_modality(owners[name]).export_dataset
        print(export(name, args.export, format=args.format, limit=args.limit, overwrite=args.overwrite))
        return
    for modality_name, datasets in listed.items():
        shown = {k: v for k, v in datasets.items() if name is None or (k == name and owners[k] == modality_name)}
        if shown:
            print(f"{modality_name}:")
        for dataset, description in shown.items():
            print(f"  {dataset}: {description}")
    if name is None:
        for modality_name, why in unavailable.items():
            print(f"{modality_name}: not available here ({why})")


def _cmd_commands(args: argparse.Namespace) -> None:
    parser, _, skipped = _build(plugin_commands=True)
    print(parser.format_help().rstrip())
    for why in skipped:
        print(f"not available here: {why}")


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that train, check, evaluate and predict."""
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a config value, e.g. --set train.epochs=3 (repeatable)"}  # fmt: skip
    p = sub.add_parser("demo", help="train, evaluate and explain a pneumonia classifier on embedded X-rays")
    p.add_argument("--output-dir", default="runs", metavar="DIR",
                   help="folder to create the run in (default: %(default)s)")  # fmt: skip
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="run an experiment from a YAML config, or resume a run")
    p.add_argument("config", nargs="?", help="experiment YAML (see docs/configuration.md)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("validate", help="check a config and its data paths without running it (every problem)")
    p.add_argument("config", help="experiment YAML to check")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("evaluate", help="evaluate a run's best model on its test split; rewrite the report")
    p.add_argument("run", help="run directory (written by `biomx train`)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict with a run's model(s) on new inputs (CSV out)")
    p.add_argument("run", help="run directory (written by `biomx train`)")
    # Static text: naming each modality's formats here would import every modality for --help.
    p.add_argument("inputs", nargs="+", help="files or folders of the kind the run was trained on "
                   "(what its data.modality reads; `biomx predict` says what it cannot read)")  # fmt: skip
    p.add_argument("-o", "--output", help="CSV file to write (default: standard output)")
    p.add_argument("--skip-errors", action="store_true", help="skip unreadable files instead of failing")
    p.add_argument("--mc-dropout", type=non_negative_int, default=None, metavar="N",
                   help="Monte Carlo dropout passes per model (default: as the run was evaluated)")
    p.add_argument("--masks", metavar="DIR", help="segmentation runs: folder for the predicted masks "
                   "(default: <output>_masks beside -o, else ./masks)")  # fmt: skip
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch (default), or the run's ONNX export in ONNX Runtime: onnx (fp32) or int8 "
                        "(after `biomx export RUN`)")  # fmt: skip
    p.set_defaults(func=_cmd_predict)


def _add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that export a run and serve it."""
    p = sub.add_parser("export", help="export a run as ONNX, torch.export and int8 ONNX, each checked "
                       "against PyTorch on its test split (see docs/deployment.md)")  # fmt: skip
    p.add_argument("run", help="run directory (written by `biomx train`)")
    p.add_argument("--out", metavar="DIR", help="folder to write (default: RUN/export)")
    p.add_argument("--formats", nargs="+", choices=("onnx", "torch", "int8"), default=["onnx", "torch", "int8"],
                   help="what to write: model.onnx, model.pt2, model.int8.onnx (default: all three)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the checkpoint of every member to export (default: %(default)s)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="serve runs over HTTP (KServe v2 REST, an upload route, a web page)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch, onnx or int8 (the ONNX engines need `biomx export RUN`; default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="most requests' rows batched into one model call (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=non_negative_int, default=5, metavar="MS",
                   help="how long a request waits for others to batch with (default: %(default)s)")
    p.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S",
                   help="seconds before a request is answered 503 (default: %(default)s)")
    p.add_argument("--max-request-mb", type=_positive_float, default=50.0, metavar="MB",
                   help="largest request body accepted (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="intra-op threads of each model's engine (default: PyTorch's / ONNX Runtime's; "
                        "1 is fastest for small models on busy or shared cores)")  # fmt: skip
    p.add_argument("--drift-log", metavar="FILE", help="append each batch's input statistics and predictions "
                   "to FILE (JSON lines) for `biomx drift RUN --from-log FILE`")  # fmt: skip
    p.set_defaults(func=_cmd_serve)


def _add_listing_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that list what biomx has: models, datasets, commands."""
    p = sub.add_parser("models", help="list the model zoo: what each model serves, its parameter count")
    p.add_argument("--modality", help="only models for this data.modality (e.g. molecule)")
    p.add_argument("--task", help="only models for this task.kind (e.g. regression)")
    p.add_argument("--in-channels", type=positive_int, default=1, metavar="N",
                   help="input channels the parameter counts assume (default: %(default)s)")
    p.add_argument("--out-dim", type=positive_int, default=2, metavar="N",
                   help="outputs (classes or targets) the parameter counts assume (default: %(default)s)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("datasets", help="list every modality's datasets, or export one as files")
    p.add_argument("--export", metavar="DIR", help="write the dataset named by --name as files under DIR")
    p.add_argument("--name", default=None,
                   help="the dataset to export (default: the first listed); without --export, list only it")
    p.add_argument("--format", default=None,
                   help="with --export: file format, for datasets that offer several (see the listing)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="with --export: at most this many samples, where the dataset allows it")
    p.add_argument("--overwrite", action="store_true",
                   help="with --export: replace files the export writes that already exist "
                        "(default: refuse, write nothing)")  # fmt: skip
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("commands", help="list every command, the data modalities' own included")
    p.set_defaults(func=_cmd_commands)


def build_parser(plugin_commands: bool = False) -> argparse.ArgumentParser:
    """The `biomx` parser: the core commands (built without importing torch or any plug-in);
    with `plugin_commands`, also each modality's own (that imports the modalities)."""
    return _build(plugin_commands)[0]


def _build(plugin_commands: bool) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction, list[str]]:
    """(parser, its subcommands, a line for each modality whose commands are missing because it
    does not load here: a package of an extra that is not installed)."""
    parser = argparse.ArgumentParser(prog="biomx", description="Deep learning for biomedical data.",
                                     epilog=None if plugin_commands else EPILOG)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(sub)
    add_card_commands(sub)
    _add_deploy_commands(sub)
    _add_listing_commands(sub)
    add_federate_commands(sub)
    add_audit_data_commands(sub)
    add_drift_commands(sub)
    add_tune_commands(sub)
    add_shards_commands(sub)
    skipped = []
    if plugin_commands:
        from biomx.modalities import get_modality, modality_names

        for name in modality_names():
            try:
                modality = get_modality(name)
            except BiomxError as err:
                skipped.append(str(err))
                continue
            modality.add_commands(sub)
    return parser, sub, skipped


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The core parser, unless the command word (the first argument that is not an option: the
    top level takes only -h and --version) names none of the core commands: then the modalities'
    commands are added, and a command still unknown says which modalities did not load."""
    parser, sub, _ = _build(plugin_commands=False)
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    if word is None or word in sub.choices:
        return parser
    parser, sub, skipped = _build(plugin_commands=True)
    if word not in sub.choices and skipped:
        parser.error(f"unknown command {word!r} (choose from {', '.join(sub.choices)}); "
                     f"not loaded here: {'; '.join(skipped)}")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser_for(argv).parse_args(argv)
    try:
        args.func(args)
    except BiomxError as err:
        message = str(err).strip()
        lines = message.splitlines() or [type(err).__name__]
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python would fail again flushing stdout)
        return 0
    except OSError as err:  # (after BrokenPipeError, an OSError too) permission, read-only, disk full
        line = os_error_line(err)
        if line is None:
            raise
        print(f"error: {line[:400]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # Only a command that imported the distributed helpers can have joined a process group;
        # importing them here would load torch after every light command.
        if "biomx.engine.distributed" in sys.modules:
            sys.modules["biomx.engine.distributed"].cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

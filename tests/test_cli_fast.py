"""`biomx --help` is fast because nothing heavy is imported to build the parser: checked by the
modules a fresh interpreter holds (never by time: the machines are shared and noisy)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import biomx
from biomx.version import __version__

HEAVY = ["torch", "monai", "sklearn", "matplotlib", "pandas", "captum", "rdkit", "torch_geometric"]


def _loaded_after(code: str) -> dict[str, list[str]]:
    """Run `code` in a fresh interpreter; it fills `stages` (name -> modules); return, for each
    stage, the HEAVY modules loaded by then."""
    program = textwrap.dedent("""
        import contextlib, io, json, sys
        HEAVY = {heavy!r}
        stages = {{}}
        def stage(name):
            stages[name] = [m for m in HEAVY if m in sys.modules]
    """).format(heavy=HEAVY) + textwrap.dedent(code) + "\nprint(json.dumps(stages))\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_and_help_of_every_command_load_nothing_heavy() -> None:
    stages = _loaded_after("""
        import biomx
        stage("import biomx")
        import biomx.cli
        stage("import biomx.cli")
        parser = biomx.cli.build_parser()
        stage("build_parser")
        commands = sorted(next(a for a in parser._actions if hasattr(a, "choices") and a.choices).choices)
        stages["commands"] = commands
        for argv in [["--help"], ["--version"], *([name, "--help"] for name in commands)]:
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
                biomx.cli.main(argv)
            assert out.getvalue().strip(), argv
            stage(" ".join(argv))
    """)
    commands = stages.pop("commands")
    assert {"demo", "train", "validate", "evaluate", "predict", "models", "datasets", "commands"} <= set(commands)
    assert f"{commands[0]} --help" in stages and "--help" in stages and "--version" in stages
    assert {stage: heavy for stage, heavy in stages.items() if heavy} == {}


def test_export_options_without_export_fail_before_anything_heavy() -> None:
    """A mistake on the command line costs no import of torch either."""
    stages = _loaded_after("""
        import biomx.cli
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = biomx.cli.main(["datasets", "--limit", "3"])
        assert code == 1 and err.getvalue().startswith("error: datasets --limit: only with --export"), err.getvalue()
        stage("datasets --limit 3")
    """)
    assert stages == {"datasets --limit 3": []}


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "biomx", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"biomx {__version__}"


def test_every_public_name_resolves_lazily() -> None:
    """Each name of `biomx.__all__` is provided by the module the lazy table names (`load` once
    biomx.predictor exists); `dir(biomx)` lists them; an unknown name is an AttributeError."""
    names = [n for n in biomx.__all__ if n != "load" or importlib.util.find_spec("biomx.predictor")]
    for name in names:
        assert getattr(biomx, name) is not None, name
    assert set(biomx.__all__) <= set(dir(biomx))
    assert set(biomx.__all__) == set(biomx._LAZY) | {"__version__"}
    assert len(biomx.__all__) == len(set(biomx.__all__))
    assert not hasattr(biomx, "not_a_biomx_name")
    with pytest.raises(AttributeError, match="not_a_biomx_name"):
        biomx.not_a_biomx_name  # noqa: B018
    assert biomx.Trainer is importlib.import_module("biomx.engine.trainer").Trainer



def test_output_piped_into_a_closed_reader_is_not_an_error(monkeypatch, capsys):
    """`biomx models | head -1`: the reader left early, so writing raises BrokenPipeError (an
    OSError, but not one the user must fix): exit 0, no error line, no traceback."""
    from biomx.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # a real pipe whose reader is gone: the next write fails with EPIPE
    monkeypatch.setattr(sys, "stdout", os.fdopen(write_end, "w", buffering=1))
    assert main(["models"]) == 0
    assert "error:" not in capsys.readouterr().err

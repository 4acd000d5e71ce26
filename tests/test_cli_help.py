"""Every command and every argument of `biomx` says what it is for in `--help`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from biomx.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _without_help(parser: argparse.ArgumentParser, path: str = "biomx") -> Iterator[str]:
    """'biomx CMD ARG' for each argument (and each command) whose help is empty, walking down."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not (helps.get(name) or "").strip():
                    yield f"{path} {name} (the command)"
                yield from _without_help(child, f"{path} {name}")
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_core_argument_has_help() -> None:
    assert list(_without_help(build_parser())) == []


def test_every_modality_command_argument_has_help() -> None:
    core = set(_subcommands(build_parser()).choices)
    full = build_parser(plugin_commands=True)
    assert set(_subcommands(full).choices) > core  # the modalities add commands of their own
    assert [line for line in _without_help(full) if line.split()[1] not in core] == []


def test_help_lists_the_core_commands_and_says_where_the_others_are(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "train", "validate", "evaluate", "predict", "export", "serve", "models", "datasets",
                 "commands"):
        assert f"    {name} " in out, name
    assert "`biomx commands` lists every command" in " ".join(out.split())

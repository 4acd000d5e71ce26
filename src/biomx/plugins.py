"""Name -> plug-in registries (modalities, tasks). Configs select plug-ins by these names only.

A built-in entry is a module path, imported on first use (so `biomx --help` imports nothing
heavy); `register` adds an object from Python (e.g. a plug-in defined in a test file).

A plug-in may need a package that only an extra installs (`pip install "biomx[molecules]"`).
When its import fails for want of one, `get` raises `MissingExtra` with the one line that says
what to install; `available()` lists the plug-ins that load here, for commands that show them all.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from biomx.errors import BiomxError, ConfigError

# The packages an extra installs (pyproject.toml [project.optional-dependencies]):
# top-level import name -> (the name a user knows it by, the extra).
EXTRAS: dict[str, tuple[str, str]] = {
    "rdkit": ("RDKit", "molecules"),
    "torch_geometric": ("PyTorch Geometric", "molecules"),
    "datamol": ("datamol", "molecules"),
    "pyfaidx": ("pyfaidx", "genomics"),
    "modlamp": ("modlamp", "genomics"),
    "pandas": ("pandas", "tabular"),
    "pyarrow": ("pyarrow", "tabular"),
    "lightgbm": ("LightGBM", "tabular"),
    "lifelines": ("lifelines", "tabular"),
    "sksurv": ("scikit-survival", "tabular"),
    "SurvSet": ("SurvSet", "tabular"),
    "mlflow": ("MLflow", "tracking"),
    "onnx": ("ONNX", "deploy"),
    "onnxruntime": ("ONNX Runtime", "deploy"),
    "onnxscript": ("onnxscript", "deploy"),
    "fastapi": ("FastAPI", "deploy"),
    "uvicorn": ("uvicorn", "deploy"),
    "multipart": ("python-multipart", "deploy"),
    "highdicom": ("highdicom", "deploy"),
    "flwr": ("Flower", "federated"),
    "opacus": ("Opacus", "privacy"),
}


class MissingExtra(BiomxError):
    """A plug-in or dataset needs a package of an extra that is not installed here."""


def install_hint(err: ImportError) -> str | None:
    """'needs RDKit: pip install "biomx[molecules]"' when `err` is a missing package of an extra,
    else None (a missing core dependency or a bug: not the user's extra to install)."""
    if not isinstance(err, ModuleNotFoundError):
        return None
    top = (err.name or "").partition(".")[0]
    if top not in EXTRAS:
        return None
    package, extra = EXTRAS[top]
    return f'needs {package}: pip install "biomx[{extra}]"'


def import_extra(module: str, what: str) -> Any:
    """`importlib.import_module(module)`; when a package of an extra is missing, MissingExtra
    '<what> needs RDKit: pip install "biomx[molecules]"' (one line) instead."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        hint = install_hint(err)
        if hint is None:
            raise
        raise MissingExtra(f"{what} {hint}") from None


def suggest(name: str, allowed: list[str]) -> str:
    """'; did you mean X?' for a close name, else ''."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def refuse_unknown_keys(value: Any, allowed: list[str]) -> Any:
    """A config mapping's keys checked against `allowed` (an optional section's own check: the
    config's error line for an unknown key looks up the enclosing section, which `X | None` hides)."""
    if isinstance(value, dict):
        for key in value:
            if key not in allowed:
                raise ValueError(f"unknown key {key!r}{suggest(str(key), allowed)} (allowed: {', '.join(allowed)})")
    return value


class Registry:
    """Plug-ins of one kind ("modality", "task"), by name."""

    def __init__(self, kind: str, key: str, entries: dict[str, str]) -> None:
        self.kind, self.key = kind, key  # key: the config key that names one, for messages
        self._entries: dict[str, Any] = dict(entries)

    def names(self) -> list[str]:
        """Every registered name, whether or not its plug-in loads here (see `available`)."""
        return list(self._entries)

    def register(self, name: str, plugin: Any) -> None:
        """Add (or replace) a plug-in; `plugin.name` must equal `name`."""
        if getattr(plugin, "name", None) != name:
            raise ValueError(f"{self.kind} plug-in registered as {name!r} must have name = {name!r}")
        self._entries[name] = plugin

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        """The plug-in; ConfigError for an unknown name, MissingExtra (one line with the pip
        command) when it needs a package of an extra that is not installed."""
        entry = self._entries.get(name)
        if entry is None:
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}{suggest(str(name), self.names())}; "
                              f"allowed: {', '.join(self.names())}")  # fmt: skip
        if isinstance(entry, str):
            entry = self._entries[name] = import_extra(entry, f"the {name} {self.kind}")
        return entry

    def missing(self) -> dict[str, str]:
        """name -> its MissingExtra line, for each plug-in whose extra is not installed here."""
        lines = {}
        for name in self._entries:
            try:
                self.get(name)
            except MissingExtra as err:
                lines[name] = str(err)
        return lines

    def available(self) -> list[str]:
        """The names whose plug-ins load here, in registration order."""
        missing = self.missing()
        return [name for name in self._entries if name not in missing]

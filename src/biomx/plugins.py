"""Name -> plug-in registries (modalities, tasks). Configs select plug-ins by these names only.

A built-in entry is a module path, imported on first use (so `biomx --help` imports nothing
heavy); `register` adds an object from Python (e.g. a plug-in defined in a test file).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from biomx.errors import ConfigError


def suggest(name: str, allowed: list[str]) -> str:
    """'; did you mean X?' for a close name, else ''."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry:
    """Plug-ins of one kind ("modality", "task"), by name."""

    def __init__(self, kind: str, key: str, entries: dict[str, str]) -> None:
        self.kind, self.key = kind, key  # key: the config key that names one, for messages
        self._entries: dict[str, Any] = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def register(self, name: str, plugin: Any) -> None:
        """Add (or replace) a plug-in; `plugin.name` must equal `name`."""
        if getattr(plugin, "name", None) != name:
            raise ValueError(f"{self.kind} plug-in registered as {name!r} must have name = {name!r}")
        self._entries[name] = plugin

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        entry = self._entries.get(name)
        if entry is None:
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}{suggest(str(name), self.names())}; "
                              f"allowed: {', '.join(self.names())}")  # fmt: skip
        if isinstance(entry, str):
            entry = self._entries[name] = importlib.import_module(entry)
        return entry

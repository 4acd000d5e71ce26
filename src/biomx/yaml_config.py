"""Reading a config file: strict YAML (no duplicate keys, no alias bombs), `--set` overrides,
and the one-line messages for YAML that cannot be read. `biomx.config` validates what this reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from biomx.errors import ConfigError

MAX_SHOWN = 80  # characters of a bad value an error line shows (a huge value is cut, with "...")
MAX_YAML_NODES = 100_000  # values a config may expand to through YAML aliases (a config has ~100)
MAX_CONFIG_BYTES = 1_000_000  # a config file is a few kB


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to `limit` characters, ending in "..." when cut (error lines stay readable)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class YAMLRefused(yaml.MarkedYAMLError):
    """YAML that parses but is refused as a config: a duplicate key, an alias bomb."""


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML keeps the last one
    silently, so a typo'd second `lr:` would win unseen). Merge keys (`<<: *base`) still override."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise YAMLRefused(None, None, f"duplicate key {shorten(repr(key))}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value: Any, memo: dict[int, int], active: set[int]) -> int:
    """How many values `value` holds with every YAML alias expanded (shared parts counted once
    per use, computed once each)."""
    if not isinstance(value, (list, dict)):
        return 1
    key = id(value)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("a recursive alias (a value that contains itself)")
    active.add(key)
    size = 1 + sum(_expanded_size(v, memo, active) for v in (value.values() if isinstance(value, dict) else value))
    active.discard(key)
    if size > MAX_YAML_NODES:
        raise ValueError(f"YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
    memo[key] = size
    return size


def load_yaml_text(text: str) -> Any:
    """Parse config YAML with `StrictLoader`; a value that aliases expand beyond MAX_YAML_NODES,
    or that contains itself, raises YAMLRefused. Other YAML errors propagate."""
    value = yaml.load(text, Loader=StrictLoader)  # noqa: S506  (a SafeLoader)
    try:
        _expanded_size(value, {}, set())
    except (ValueError, RecursionError) as err:
        problem = str(err) if isinstance(err, ValueError) else "nested too deeply"
        raise YAMLRefused(None, None, problem, None) from None
    return value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line about a YAML error: 'line N: problem'."""
    mark = getattr(err, "problem_mark", None)
    if isinstance(err, yaml.reader.ReaderError):
        return f"not a text file ({shorten(err.reason)} at character {err.position})"
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    where = f"line {mark.line + 1}: " if mark else ""
    if isinstance(err, YAMLRefused):
        return f"{where}{shorten(problem, 2 * MAX_SHOWN)}"
    return f"{where}invalid YAML: {shorten(problem, 2 * MAX_SHOWN)}"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML: 3, 1e-3, true, [1, 2])."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            value = load_yaml_text(text)
        except YAMLRefused as err:
            raise ConfigError(f"--set {shorten(repr(item))}: {_yaml_problem(err)}") from None
        except (yaml.YAMLError, RecursionError):
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a config file (a YAML file)")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) file: byte {err.start} is 0x{err.object[err.start]:02x}; "
                          "a config is a YAML file") from None  # fmt: skip
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    try:
        raw = load_yaml_text(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, task, train, ...)")
    return raw

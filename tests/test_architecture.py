"""The architecture, checked statically: who may import whom, and who may know what.

Every module under src/biomx is parsed with `ast` (nothing is imported, so this file needs no
torch and runs in well under a second). The rules are the ones of docs/architecture.md:

- engine, data, report, models and the protocol layer (every other module outside
  `modalities/` and `tasks/`) never import a concrete modality or task;
- a modality never imports another (only `modalities/common/`), a task never imports another;
- no import cycle, no private name imported across packages;
- no module over 500 lines, no function over 80;
- modality words appear only inside `modalities/`; nobody outside `tasks/` compares a value
  with a task name, nobody outside `modalities/` with a modality name.

Each rule lists every offender (file:line and what) in its failure message. Exceptions are
listed below by name, with the reason; a new offender fails its rule.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "biomx"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Imports of a concrete modality or task tolerated outside the plug-in folders: none. (An entry
# would name file -> imports; the test fails for a new one and for one no longer needed.)
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}

# Files the word grep skips, with the reason: biomx/__init__.py is the public API and may name
# every modality's entry points.
WORD_GREP_SKIPPED = {
    "biomx/__init__.py": "public API: re-exports entry points of every modality and task",
}

# Words that belong to one modality. Matched case-insensitively as words: letters and digits
# may not touch them (underscores separate words, so `smiles_column` and `_dicom_window` count),
# plurals count ("chromosomes"), and Grad-CAM / grad_cam / gradcam are one word.
MODALITY_WORDS = ("smiles", "dicom", "fasta", "nifti", "msd", "chromosome", "scaffold", "gradcam",
                  "alphabet", "strand_average")  # fmt: skip
_WORD_FORMS = {"gradcam": r"grad[-_ ]?cam", "strand_average": r"strand[-_ ]average"}
WORD_PATTERN = re.compile(
    r"(?<![a-z0-9])(" + "|".join(_WORD_FORMS.get(w, w) for w in MODALITY_WORDS) + r")(?:e?s)?(?![a-z0-9])",
    re.IGNORECASE,
)

TASK_NAMES = frozenset({"classification", "regression", "segmentation", "binary", "multiclass", "multilabel"})
MODALITY_NAMES = frozenset({"image", "volume", "sequence", "molecule"})


# ---------------------------------------------------------------- the parsed source tree


@dataclass(frozen=True)
class Module:
    name: str  # biomx.engine.trainer; a package is its __init__: biomx.engine
    path: Path
    rel: str  # biomx/engine/trainer.py, for messages and the rules' folders
    is_package: bool
    tree: ast.Module
    lines: tuple[str, ...]

    @property
    def package(self) -> str:
        """The package a relative import starts from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def under(self, folder: str) -> bool:
        return self.rel.startswith(folder)


@dataclass(frozen=True)
class Import:
    source: Module
    line: int
    target: str  # the biomx module imported (resolved: relative, `from pkg import submodule`)
    names: tuple[str, ...]  # for `from x import a, b`: a, b; else ()
    module_level: bool  # runs at import time (not inside a function, not under TYPE_CHECKING)

    def where(self) -> str:
        return f"{self.source.rel}:{self.line}"


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        parts = rel[: -len(".py")].split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        text = path.read_text(encoding="utf-8")
        found[name] = Module(name, path, rel, is_package, ast.parse(text, filename=rel), tuple(text.splitlines()))
    return found


def _resolve(module: Module, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node with whether it runs at import time (outside functions and TYPE_CHECKING)."""
    for child in ast.iter_child_nodes(node):
        here = module_level
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            here = False
        yield child, here
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from ((n, False) for n in _walk_body(child.body))
            for orelse in child.orelse:
                yield orelse, here
                yield from _walk(orelse, here)
            continue
        yield from _walk(child, here)


def _walk_body(body: list[ast.stmt]) -> Iterator[ast.AST]:
    for stmt in body:
        yield stmt
        yield from (n for n, _ in _walk(stmt, False))


def _dynamic_import(node: ast.Call) -> str | None:
    """`importlib.import_module("biomx.x")` / `__import__("biomx.x")` with a constant name."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called in ("import_module", "__import__") and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


@cache
def imports() -> tuple[Import, ...]:
    """Every import of a biomx module, static or inside a function, relative ones resolved."""
    known = modules()
    found = []
    for module in known.values():
        for node, module_level in _walk(module.tree, True):
            if isinstance(node, ast.Import):
                found += [Import(module, node.lineno, a.name, (), module_level) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node.level, node.module)
                submodules = [a.name for a in node.names if f"{base}.{a.name}" in known]
                names = tuple(a.name for a in node.names if a.name not in submodules)
                found += [Import(module, node.lineno, f"{base}.{s}", (), module_level) for s in submodules]
                if names or not submodules:
                    found.append(Import(module, node.lineno, base, names, module_level))
            elif isinstance(node, ast.Call) and (target := _dynamic_import(node)):
                found.append(Import(module, node.lineno, target, (), False))
    return tuple(i for i in found if i.target == "biomx" or i.target.startswith("biomx."))


def _child(target: str, registry: str) -> str | None:
    """`image` for biomx.modalities.image.readers under registry biomx.modalities; else None."""
    prefix = registry + "."
    return target[len(prefix):].split(".")[0] if target.startswith(prefix) else None


def _plugin(target: str, registry: str) -> str | None:
    """The concrete plug-in (a sub-package of the registry package, e.g. `image`, `regression`)
    that `target` is in; None outside it. Shared code is no plug-in: `modalities/common/`, and
    plain modules beside the registry's __init__.py (e.g. `tasks/stats.py`)."""
    child = _child(target, registry)
    if child is None or child == "common":
        return None
    known = modules()
    package = f"{registry}.{child}"
    return child if package in known and known[package].is_package else None


def _report(title: str, offenders: list[str]) -> str:
    return f"{title} ({len(offenders)}):\n  " + "\n  ".join(offenders)


# ---------------------------------------------------------------- layers


def test_layers_import_no_concrete_modality_or_task() -> None:
    """engine, data, report, models and the protocol layer (protocols, plugins, errors, config,
    runs, evaluation, batched, uncertainty, experiment, predict, cli, __main__, explain/), and
    every other module outside modalities/ and tasks/, reach modalities and tasks only through
    the registries `biomx.modalities` / `biomx.tasks`: nothing below them (modalities/common/
    and shared task modules included). biomx/__init__.py (the public API) is exempt."""
    offenders, tolerated = [], set()
    for imp in imports():
        src = imp.source
        if src.under("biomx/modalities/") or src.under("biomx/tasks/") or src.rel == "biomx/__init__.py":
            continue
        concrete = _child(imp.target, "biomx.modalities") or _child(imp.target, "biomx.tasks")
        if concrete is None:
            continue
        if imp.target in KNOWN_EXCEPTIONS.get(src.rel, set()):
            tolerated.add((src.rel, imp.target))
            continue
        offenders.append(f"{imp.where()}: imports {imp.target}")
    stale = [f"{rel}: {target}" for rel, targets in KNOWN_EXCEPTIONS.items() for target in targets
             if (rel, target) not in tolerated]  # fmt: skip
    assert not offenders, _report("modules outside modalities/ and tasks/ importing a concrete one", offenders)
    assert not stale, _report("KNOWN_EXCEPTIONS no longer needed (remove them)", stale)


def test_no_modality_imports_another() -> None:
    """modalities/<a>/ imports nothing from modalities/<b>/; modalities/common/ is shared by all
    and imports no concrete modality itself."""
    offenders = _cross_plugin_imports("biomx.modalities", "modality")
    assert not offenders, _report("modalities importing another modality", offenders)


def test_no_task_imports_another() -> None:
    """tasks/<a>/ imports nothing from tasks/<b>/; shared modules beside tasks/__init__.py (e.g.
    tasks/stats.py) are for every task and import no concrete task themselves."""
    offenders = _cross_plugin_imports("biomx.tasks", "task")
    assert not offenders, _report("tasks importing another task", offenders)


def _cross_plugin_imports(registry: str, kind: str) -> list[str]:
    offenders = []
    for imp in imports():
        if _child(imp.source.name, registry) is None:  # not in the registry's folder
            continue
        own = _plugin(imp.source.name, registry) or "shared code"
        other = _plugin(imp.target, registry)
        if other is not None and other != own:
            offenders.append(f"{imp.where()}: {kind} {own!r} imports {imp.target}")
    return offenders


# ---------------------------------------------------------------- cycles and private names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first node repeated at the end) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:  # a shortest path back to the start, inside the component
        start, members = component[0], set(component)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph[v] & members):
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def test_no_import_cycles() -> None:
    """Imports that run at import time (module top level, outside TYPE_CHECKING) form no cycle."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    where: dict[tuple[str, str], str] = {}
    for imp in imports():
        if imp.module_level and imp.target in known:
            graph[imp.source.name].add(imp.target)
            where.setdefault((imp.source.name, imp.target), imp.where())
    offenders = [" -> ".join(cycle) + "  (" + ", ".join(where[edge] for edge in pairwise(cycle)) + ")"
                 for cycle in _cycles(graph)]  # fmt: skip
    assert not offenders, _report("import cycles", offenders)


def test_no_private_names_imported_across_packages() -> None:
    """`from biomx.x.y import _name` only from a module in the same folder as biomx.x.y."""
    known = modules()
    offenders = []
    for imp in imports():
        private = [n for n in imp.names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
        target = known.get(imp.target)
        if not private or target is None:
            continue
        if imp.source.path.parent != target.path.parent:
            offenders.append(f"{imp.where()}: {', '.join(private)} from {imp.target}")
    assert not offenders, _report("private names imported from another package", offenders)


# ---------------------------------------------------------------- sizes


def test_no_module_over_500_lines() -> None:
    offenders = [f"{m.rel}: {len(m.lines)} lines" for m in modules().values() if len(m.lines) > MAX_MODULE_LINES]
    assert not offenders, _report(f"modules over {MAX_MODULE_LINES} lines", offenders)


def test_no_function_over_80_lines() -> None:
    """Counted from the `def` line to the last line of the body (docstring included)."""
    offenders = []
    for m in modules().values():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    offenders.append(f"{m.rel}:{node.lineno}: {node.name}() {n} lines")
    assert not offenders, _report(f"functions over {MAX_FUNCTION_LINES} lines", offenders)


# ---------------------------------------------------------------- what a module may know


def test_modality_words_only_in_modalities() -> None:
    """No modality word (smiles, dicom, fasta, ...) in code, strings, comments or docstrings
    outside src/biomx/modalities/ (files in WORD_GREP_SKIPPED aside)."""
    offenders = []
    for m in modules().values():
        if m.under("biomx/modalities/") or any(m.under(skipped) for skipped in WORD_GREP_SKIPPED):
            continue
        for number, line in enumerate(m.lines, 1):
            words = sorted({w.lower() for w in WORD_PATTERN.findall(line)})
            if words:
                offenders.append(f"{m.rel}:{number}: {', '.join(words)}: {line.strip()[:100]}")
    assert not offenders, _report("modality words outside modalities/", offenders)


def _string_constants(node: ast.expr, aliases: dict[str, frozenset[str]]) -> frozenset[str] | None:
    """The strings a comparison side stands for: a constant, a tuple/list/set of constants, or a
    name assigned one of those in the same module; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return frozenset({node.value})
    if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return frozenset(e.value for e in node.elts)
    if isinstance(node, ast.Name) and node.id in aliases:
        return aliases[node.id]
    return None


def _aliases(tree: ast.Module, names: frozenset[str]) -> dict[str, frozenset[str]]:
    """`NAME = "regression"` / `KINDS = ("binary", "multiclass")` anywhere in a module."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            values = _string_constants(node.value, {})
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if values and values & names:
                found.update({t.id: values for t in targets if isinstance(t, ast.Name)})
    return found


def _name_dispatch(m: Module, names: frozenset[str]) -> Iterator[str]:
    """Where module `m` branches on one of `names`: a comparison (==, !=, in, not in) with such a
    string (or a tuple/list/set holding one), a `case "..."`, or a dispatch table (a dict literal
    whose keys are all such names; `{"image": pixels, "label": y}` is a record, not a dispatch)."""
    aliases = _aliases(m.tree, names)
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Compare):
            if not all(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            for side in [node.left, *node.comparators]:
                hit = (_string_constants(side, aliases) or frozenset()) & names
                if hit:
                    yield f"{m.rel}:{node.lineno}: compares with {', '.join(sorted(hit))}: {ast.unparse(node)[:100]}"
                    break
        elif isinstance(node, ast.MatchValue):
            hit = (_string_constants(node.value, aliases) or frozenset()) & names
            if hit:
                yield f"{m.rel}:{node.lineno}: case {', '.join(sorted(hit))}"
        elif isinstance(node, ast.Dict) and len(node.keys) > 1:  # a dispatch table: every key a name
            hit = {k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in names}
            if len(hit) == len(node.keys):
                yield f"{m.rel}:{node.lineno}: dict keyed by {', '.join(sorted(hit))}: {ast.unparse(node)[:100]}"


def test_no_task_name_comparisons_outside_tasks() -> None:
    """Outside tasks/, nothing compares with a task name or classification kind (classification,
    regression, segmentation, binary, multiclass, multilabel), matches it, or dispatches on it in
    a dict: behaviour that depends on the task is a method of the task."""
    offenders = [hit for m in modules().values() if not m.under("biomx/tasks/")
                 for hit in _name_dispatch(m, TASK_NAMES)]  # fmt: skip
    assert not offenders, _report("task-name branches outside tasks/", offenders)


def test_no_modality_name_comparisons_outside_modalities() -> None:
    """Outside modalities/, nothing compares with a modality name (image, volume, sequence,
    molecule), matches it, or dispatches on it in a dict."""
    offenders = [hit for m in modules().values() if not m.under("biomx/modalities/")
                 for hit in _name_dispatch(m, MODALITY_NAMES)]  # fmt: skip
    assert not offenders, _report("modality-name branches outside modalities/", offenders)


# ---------------------------------------------------------------- the checker itself


def test_checker_sees_what_it_must() -> None:
    """The parser finds the package, resolves relative imports and the patterns match (so no
    rule above passes because it looked at nothing)."""
    known = modules()
    assert {"biomx", "biomx.protocols", "biomx.modalities", "biomx.tasks", "biomx.engine.trainer"} <= set(known)
    assert len(known) > 50
    tree = ast.parse("from . import protocols\nfrom .plugins import Registry\n"
                     "def f():\n    from ..x import _y\nif TYPE_CHECKING:\n    import biomx.z\n")  # fmt: skip
    fake = Module("biomx.tasks.t", PACKAGE / "tasks" / "t.py", "biomx/tasks/t.py", False, tree, ())
    seen = [(node, level) for node, level in _walk(fake.tree, True) if isinstance(node, ast.ImportFrom | ast.Import)]
    assert [_resolve(fake, n.level, n.module) for n, _ in seen if isinstance(n, ast.ImportFrom)] == [
        "biomx.tasks", "biomx.tasks.plugins", "biomx.x"]
    assert [level for _, level in seen] == [True, True, False, False]
    assert WORD_PATTERN.search("cfg.data.sequence.strand_average") and WORD_PATTERN.search("Grad-CAM overlay")
    assert WORD_PATTERN.search("smiles_column") and WORD_PATTERN.search("chromosomes")
    assert not WORD_PATTERN.search("fastapi") and not WORD_PATTERN.search("pydicomx")
    compare = ast.parse('KINDS = ("binary", "multiclass")\nif kind in KINDS or x == "image": pass\n'
                        'y = {"regression": 1, "segmentation": 2}\nz = {"image": 1, "label": 2}\n')  # fmt: skip
    toy = Module("biomx.toy", PACKAGE / "toy.py", "biomx/toy.py", False, compare, ())
    assert len(list(_name_dispatch(toy, TASK_NAMES))) == 2
    assert len(list(_name_dispatch(toy, MODALITY_NAMES))) == 1
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _plugin("biomx.tasks.regression.task", "biomx.tasks") == "regression"
    assert _plugin("biomx.modalities.image", "biomx.modalities") == "image"
    assert _plugin("biomx.modalities.common.msd", "biomx.modalities") is None
    assert _plugin("biomx.modalities", "biomx.modalities") is None

"""Fine-tuning: start a run from another run's weights (`model.init_from`), restart some layers
(`model.reinit`), freeze part of the model (`train.freeze`) and scale the learning rate per module
(`train.lr_multipliers`).

Every tensor whose name and shape match the parent's is copied, except those under a
`model.reinit` prefix ("head": the head below), which keep their fresh initialisation like the
rest (typically the head, for a different number of classes). A head whose shape fits can still
point the wrong way (another task's classes), hence reinit. What was reused, newly initialised,
restarted by model.reinit or skipped for a shape mismatch is written to RUN/transfer.json and shown
in the report.

The head, for `train.freeze: [backbone]`: the parameters that were not loaded because their shape
differs from the parent's or model.reinit restarted them; when every shape matched (or nothing was
loaded), the last Linear or Conv module in registration order (also what `model.reinit: [head]`
restarts). A resumed run reads the head from its transfer.json and loads
its own checkpoint, never init_from again. Only safetensors are read (a run's best checkpoint, or a
.safetensors file); never pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from biomx.engine import distributed as dist
from biomx.engine.checkpoint import load_checkpoint
from biomx.errors import BiomxError, ConfigError
from biomx.runs import find_checkpoint, read_json, write_json

FILE = "transfer.json"
BACKBONE = "backbone"
HEAD = "head"  # model.reinit: the head as head_params finds it
AUTO = "auto"  # model.name that selects among candidates (biomx.selection), each trained from scratch


def parent_weights(init_from: str | Path) -> tuple[dict[str, torch.Tensor], Path | None]:
    """The parent's weights: a run folder's best checkpoint (last if none) or a .safetensors file;
    also the parent run folder (None for a file).

    Raises:
        ConfigError: the path is missing, is not safetensors, or is a run without a checkpoint.
    """
    path = Path(init_from).expanduser()
    if path.is_dir():
        try:
            return load_checkpoint(find_checkpoint(path))[0], path
        except BiomxError as err:
            raise ConfigError(f"model.init_from: {err}") from None
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} not found (a run folder or a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            biomx_file = "biomx" in (f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()} if not biomx_file else {}
    except (OSError, ValueError, RuntimeError, SafetensorError):
        raise ConfigError(f"model.init_from: {path} is not a safetensors file (a run folder or a .safetensors "
                          "file; pickled .pt/.pth files are refused)") from None  # fmt: skip
    if biomx_file:  # a biomx checkpoint: its checksum is checked, its optimizer state left out
        try:
            return load_checkpoint(path)[0], None
        except BiomxError as err:
            raise ConfigError(f"model.init_from: {err}") from None
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    return tensors, None


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                  reinit: list[str] | None = None) -> dict[str, list[str]]:
    """Copy every tensor of `weights` whose name and shape match the model's state, except those
    under a `reinit` prefix ("head": the head, see head_params); returns the names reused, restarted
    by reinit (shapes matched), newly initialised (not in the parent), and skipped (another shape).

    Raises:
        ConfigError: no tensor matched (another architecture, or another naming); a reinit prefix
            matches no tensor.
    """
    state = model.state_dict()
    fits = [k for k in state if k in weights and tuple(weights[k].shape) == tuple(state[k].shape)]
    mismatched = [k for k in state if k in weights and k not in fits]
    if not fits:
        theirs = ", ".join(list(weights)[:3]) or "none"
        ours = ", ".join(list(state)[:3])
        raise ConfigError(f"model.init_from: {source}: no tensor matches this model by name and shape "
                          f"(its tensors: {theirs}...; this model's: {ours}...); start from a run of the same model")  # fmt: skip
    fresh = set(reinit_names(model, reinit or [], mismatched))
    reused = [k for k in fits if k not in fresh]
    with torch.no_grad():
        for k in reused:
            state[k].copy_(weights[k].to(state[k].dtype))
    new = [k for k in state if k not in weights]
    return {"reused": reused, "reinit": [k for k in fits if k in fresh], "new": new, "mismatched": mismatched}


def reinit_names(model: nn.Module, prefixes: list[str], mismatched: list[str]) -> list[str]:
    """The state tensors (parameters and buffers) under each model.reinit prefix; "head" = head_params.

    Raises:
        ConfigError: a prefix matches no tensor (one line naming a few module names).
    """
    names = list(model.state_dict())
    chosen: set[str] = set()
    for prefix in prefixes:
        hit = head_params(model, mismatched) if prefix == HEAD else [n for n in names if _matches(n, prefix)]
        if not hit:
            raise ConfigError(f"model.reinit: {prefix!r} matches no layer; module names: "
                              f"{_few_modules(model, backbone=False)} (or {HEAD!r})")  # fmt: skip
        chosen.update(hit)
    return [n for n in names if n in chosen]


def head_params(model: nn.Module, mismatched: list[str]) -> list[str]:
    """The head's parameter names: those skipped for a shape mismatch, else the last Linear/Conv."""
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n in set(mismatched)]
    if head:
        return head
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            last = name
    if last is None:
        return []
    return [n for n in names if n.startswith(f"{last}.")]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip(".") + ".") or (prefix.endswith(".") and name.startswith(prefix))


def freeze(model: nn.Module, prefixes: list[str], head: list[str]) -> list[str]:
    """Set requires_grad False under each prefix ("backbone": all but `head`); the frozen names.

    Raises:
        ConfigError: a prefix matches no parameter (one line naming a few module names).
    """
    names = [n for n, _ in model.named_parameters()]
    frozen: set[str] = set()
    for prefix in prefixes:
        hit = [n for n in names if n not in head] if prefix == BACKBONE else [n for n in names if _matches(n, prefix)]
        if not hit:
            raise ConfigError(f"train.freeze: {prefix!r} matches no parameter; module names: {_few_modules(model)}")
        frozen.update(hit)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return [n for n in names if n in frozen]


def _few_modules(model: nn.Module, backbone: bool = True) -> str:
    tops = [n for n, m in model.named_children() if any(True for _ in m.parameters())]  # with parameters
    shown = tops if len(tops) <= 8 else [*tops[:4], "...", *tops[-3:]]
    return ", ".join(shown) + (f" (or {BACKBONE!r})" if backbone else "")


def multiplier_of(name: str, multipliers: dict[str, float]) -> float:
    """The factor on the lr for parameter `name`: the longest matching prefix wins; 1 for none."""
    best = max((p for p in multipliers if _matches(name, p)), key=len, default=None)
    return 1.0 if best is None else float(multipliers[best])


def check_multipliers(model: nn.Module, multipliers: dict[str, float]) -> None:
    """Raises ConfigError for a train.lr_multipliers prefix that matches no parameter."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in multipliers:
        if not any(_matches(n, prefix) for n in names):
            raise ConfigError(f"train.lr_multipliers: {prefix!r} matches no parameter; module names: "
                              f"{_few_modules(model, backbone=False)}")  # fmt: skip


def start(model: nn.Module, cfg: Any, member_dir: Path | None) -> dict[str, Any] | None:
    """Apply model.init_from and train.freeze to a freshly built model before its trainer is made;
    write transfer.json in the member's folder (rank 0). None when neither is set.

    A resumed run (its folder has checkpoints/last.safetensors) does not load init_from again: its
    own checkpoint is loaded by the trainer; the head is read from its transfer.json."""
    init_from, prefixes = cfg.model.init_from, list(cfg.train.freeze)
    check_multipliers(model, dict(cfg.train.lr_multipliers))
    _check_reinit(cfg)
    if init_from is None and not prefixes:
        return None
    resuming = member_dir is not None and (member_dir / "checkpoints" / "last.safetensors").is_file()
    saved = member_dir / FILE if member_dir is not None else None
    if resuming and saved is not None and saved.is_file():
        info = read_json(saved)
    elif init_from is not None:
        weights, parent = parent_weights(init_from)
        info = {"init_from": str(init_from), **load_matching(model, weights, str(init_from), list(cfg.model.reinit))}
        if parent is not None and member_dir is not None and cfg.train.privacy is not None and dist.is_main():
            info["privacy"] = _inherit(member_dir, parent, cfg)
    else:
        info = {"init_from": None, "reused": [], "reinit": [], "new": [], "mismatched": []}
    info["head"] = head_params(model, [*info["mismatched"], *info.get("reinit", [])])
    info["frozen"] = freeze(model, prefixes, info["head"])
    info["lr_multipliers"] = dict(cfg.train.lr_multipliers)
    if saved is not None and dist.is_main() and not resuming:
        write_json(saved, info)
    return info


def check_init_from(cfg: Any, build: Any) -> None:
    """Before any run file is written: model.init_from exists, is safetensors, and shares at least
    one tensor with the model `build()` makes (a bad one leaves no half-made run folder behind).
    Also checks model.reinit, train.freeze and train.lr_multipliers prefixes."""
    _check_reinit(cfg)
    if cfg.model.init_from is None and not cfg.train.freeze and not cfg.train.lr_multipliers:
        return
    model = build()
    weights = parent_weights(cfg.model.init_from)[0] if cfg.model.init_from is not None else {}
    info = load_matching(model, weights, str(cfg.model.init_from), list(cfg.model.reinit)) if weights else {}
    freeze(model, list(cfg.train.freeze), head_params(model, [*info.get("mismatched", []), *info.get("reinit", [])]))
    check_multipliers(model, dict(cfg.train.lr_multipliers))


def _check_reinit(cfg: Any) -> None:
    """model.name: auto trains every candidate from scratch, so init_from/reinit would be silently
    ignored there; model.reinit without init_from restarts what is fresh already. One line each."""
    if cfg.model.name == AUTO and (cfg.model.init_from is not None or cfg.model.reinit):
        key = "model.init_from" if cfg.model.init_from is not None else "model.reinit"
        raise ConfigError(f"{key}: not with model.name: auto (model selection trains every candidate from "
                          "scratch); name one model family, e.g. the one a parent run was trained with")  # fmt: skip
    if cfg.model.reinit and cfg.model.init_from is None:
        raise ConfigError("model.reinit: only with model.init_from (without a parent every layer starts fresh)")


def _inherit(member_dir: Path, parent: Path, cfg: Any) -> dict[str, Any]:
    """A DP fine-tune: the parent DP run's budget joins the book when both trained on the same data."""
    from biomx.privacy.budget import inherit

    run_dir = next((d for d in [member_dir, *member_dir.parents] if (d / "split.csv").is_file()), member_dir)
    return inherit(run_dir, parent, cfg.train.privacy.budget_file)


def transfer_sections(run_dir: Path) -> list[dict[str, Any]]:
    """The report's "Fine-tuning" section: which layers came from the parent, which are new."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        members = sorted((Path(run_dir) / "members").glob(f"*/{FILE}"))
        if not members:
            return []
        path = members[0]
    info = read_json(path)
    reinit = info.get("reinit", [])  # transfer.json files older than model.reinit lack it
    text = (f"Started from {info['init_from']}: {len(info['reused'])} tensors reused, {len(info['new'])} newly "
            f"initialised, {len(info['mismatched'])} skipped for a shape mismatch (kept new)"
            + (f", {len(reinit)} restarted by model.reinit" if reinit else "") + ". "
            if info.get("init_from") else "Trained from a fresh initialisation. ")  # fmt: skip
    text += f"{len(info['frozen'])} parameters frozen; head: {', '.join(info['head']) or 'none'}."
    if info.get("lr_multipliers"):
        text += " Learning-rate factors: " + ", ".join(f"{k} x{v:g}" for k, v in info["lr_multipliers"].items()) + "."
    rows = [[k, "reused"] for k in info["reused"]] + [[k, "new (model.reinit)"] for k in reinit]
    rows += [[k, "new (shape mismatch)"] for k in info["mismatched"]]
    rows += [[k, "new"] for k in info["new"]]
    frozen = set(info["frozen"])
    table = {"header": ["tensor", "origin", "frozen"], "rows": [[*r, "yes" if r[0] in frozen else ""] for r in rows]}
    return [{"title": "Fine-tuning", "text": text, "table": table}]

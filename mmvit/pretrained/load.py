"""Apply a converted checkpoint to a model and account for every key (the format-independent half).

A converter (``timm.py``, ``convert_mmvit`` below) turns a checkpoint into a :class:`ConversionPlan`: for each model
key the tensor to load and the checkpoint keys it came from, plus reasons for the checkpoint keys it did
not use. :func:`apply_plan` then checks shapes against the model, resizes what can be resized (patch
kernels through the tokenizer's ``load_2d``: FlexiViT PI-resize and ViViT inflation; position grids
through ``resample_grid``), copies, and returns a :class:`LoadReport`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch
import torch.nn as nn

from mmvit.ops.resize import resample_grid
from mmvit.pretrained.report import LoadReport

logger = logging.getLogger("mmvit.pretrained")


@dataclasses.dataclass
class Entry:
    """What goes into one model key: ``tensor`` computed from the checkpoint keys ``sources``."""

    tensor: torch.Tensor
    sources: tuple[str, ...]
    note: str = ""


@dataclasses.dataclass
class ConversionPlan:
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)   # checkpoint key -> why unused
    remarks: list[str] = dataclasses.field(default_factory=list)

    def add(self, key: str, tensor: torch.Tensor, *sources: str, note: str = "") -> None:
        self.entries[key] = Entry(tensor, sources, note)

    def skip(self, ckpt_key: str, reason: str) -> None:
        self.reasons[ckpt_key] = reason


def _missing_hint(model: nn.Module, key: str) -> str:
    """Why the model has no ``key``, in terms of its config where one explains it."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return f"the model has no {key!r}"
    if key.startswith("blocks."):
        index = int(key.split(".")[1])
        if index >= cfg.depth:
            return f"the model has {cfg.depth} blocks"
    if key.endswith(".bias") and not cfg.bias:
        return "the model has no biases (bias: false)"
    if "q_norm" in key or "k_norm" in key:
        return "the model has no query-key norm (qk_norm: false)"
    if key == "cls_token":
        return f"the model has no class token (pool: {cfg.pool})"
    if key.startswith("pool."):
        return f"the model pools with {cfg.pool!r}, not map"
    if key.startswith("head."):
        if getattr(cfg, "tasks", None):
            return f"the model has one head per task ({sorted(cfg.tasks)}), initialised for its own classes"
        return "the model has no head (num_classes: 0)"
    if key.startswith("pos_embed."):
        return f"the model's position embedding is {cfg.pos_embed.get('type')!r}"
    return f"the model has no {key!r}"


def _size(t: torch.Tensor | torch.Size) -> str:
    return "x".join(str(s) for s in (t.shape if isinstance(t, torch.Tensor) else t))


def apply_plan(model: nn.Module, plan: ConversionPlan, ckpt_keys: list[str], *, path: str, format: str,
               strict_shapes: bool = True) -> LoadReport:
    """Check ``plan`` against ``model``, then load it; returns the report (see :class:`LoadReport`).

    Raises:
        ValueError: with ``strict_shapes``, for tensors whose shape neither matches nor can be resized,
            naming every such key with both shapes. The head (a new label space) is never an error.
    """
    report = LoadReport(path=path, format=format, remarks=list(plan.remarks))
    reasons = dict(plan.reasons)
    state = model.state_dict(keep_vars=True)
    for key, entry in plan.entries.items():
        if key not in state:
            for src in entry.sources:
                reasons.setdefault(src, _missing_hint(model, key))

    actions: list[Callable[[], None]] = []
    mismatches: list[str] = []
    for key, target in state.items():
        entry = plan.entries.get(key)
        owner_name, _, leaf = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if entry is None:
            weight = plan.entries.get(f"{owner_name}.weight")
            if leaf == "bias" and weight is not None:
                # The checkpoint's layer has no bias (timm qkv_bias=False, or a bias-free model): with a
                # zero bias this layer computes exactly what the checkpoint's did.
                actions.append(lambda t=target: t.data.zero_())
                report.initialised.append(key)
                report.notes[key] = "set to zero: the checkpoint's layer has no bias"
            else:
                report.initialised.append(key)
                report.notes[key] = "not in the checkpoint"
            continue

        src = entry.tensor
        note = entry.note
        if tuple(src.shape) == tuple(target.shape):
            actions.append(lambda t=target, s=src: t.data.copy_(s.to(t.dtype)))
            category = "loaded"
        elif leaf == "weight" and hasattr(owner, "load_2d") and _as_2d(src, target) is not None:
            kernel = _as_2d(src, target)
            actions.append(lambda m=owner, k=kernel.to(target.dtype): m.load_2d(k))
            frames = target.shape[2] if target.ndim == 5 else 1
            how = []
            if tuple(kernel.shape[-2:]) != tuple(target.shape[-2:]):
                how.append(f"PI-resized {_size(kernel.shape[-2:])} -> {_size(target.shape[-2:])}")
            if frames > 1:
                how.append(f"inflated over {frames} frames ({getattr(owner, 'init_mode', 'inflate')})")
            note = "; ".join(filter(None, [note, ", ".join(how)]))
            category = "resampled" if how else "loaded"
        elif leaf == "grid" and src.ndim == 3 and target.ndim == 3 and src.shape[-1] == target.shape[-1]:
            mode, antialias = getattr(owner, "mode", "bilinear"), getattr(owner, "antialias", True)
            grid = resample_grid(src.float(), tuple(target.shape[:2]), mode, antialias)
            actions.append(lambda t=target, g=grid: t.data.copy_(g.to(t.dtype)))
            how = f"resampled {_size(src.shape[:2])} -> {_size(target.shape[:2])} ({mode}, antialias={antialias})"
            note = "; ".join(filter(None, [note, how]))
            category = "resampled"
        else:
            shapes = f"checkpoint {tuple(src.shape)}, model {tuple(target.shape)}"
            if key.startswith(("head.", "task_heads.")) or not strict_shapes:
                what = "a head of another size" if key.startswith(("head.", "task_heads.")) else "shape mismatch"
                report.initialised.append(key)
                report.notes[key] = f"{what} ({', '.join(entry.sources)}): {shapes}"
                for s in entry.sources:
                    reasons.setdefault(s, f"{what} ({key}): {shapes}")
            else:
                mismatches.append(f"{key} <- {', '.join(entry.sources)}: {shapes}")
            continue
        getattr(report, category).append(key)
        report.sources[key] = list(entry.sources)
        if note:
            report.notes[key] = note

    if mismatches:
        raise ValueError(f"{path}: {len(mismatches)} tensor(s) do not fit the model (pass strict_shapes=False to "
                         f"initialise them instead):\n  " + "\n  ".join(mismatches))
    with torch.no_grad():
        for act in actions:
            act()

    used = {s for srcs in report.sources.values() for s in srcs}
    for key in ckpt_keys:
        if key not in used:
            report.ignored.append(key)
            report.reasons[key] = reasons.get(key, "no matching parameter in the model")
    logger.info("%s", report.summary())
    return report


def _as_2d(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """A 2D kernel ``[D, C, p, p]`` from ``src`` when it fits ``target``'s ``[D, C, ...]``, else None."""
    kernel = src[:, :, 0] if src.ndim == 5 and src.shape[2] == 1 else src
    if kernel.ndim != 4 or tuple(kernel.shape[:2]) != tuple(target.shape[:2]):
        return None
    return kernel


def convert_mmvit(state: dict[str, torch.Tensor], model: nn.Module, **kwargs) -> ConversionPlan:
    """An mmvit export (``tools/export.py``): same key names, so only shapes can differ (new head, other
    patch or grid size, a 2D kernel going into a tubelet)."""
    if kwargs:
        raise TypeError(f"format 'mmvit' takes no options, got {sorted(kwargs)}")
    plan = ConversionPlan()
    for key, value in state.items():
        plan.add(key, value, key)
    return plan

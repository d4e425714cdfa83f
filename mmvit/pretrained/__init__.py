"""Pretrained weights in and out: import timm ViT checkpoints (ViT, Dosovitskiy et al. 2021) into the NaViT
trunk, for images and, through ViViT's kernel inflation (Arnab et al. 2021), for videos; export trained
DeepSpeed checkpoints (``export.py``).

    model = mmvit.build_model(timm_vit_config("S/16", num_classes=18))
    report = mmvit.load_pretrained(model, "vit_small_patch16_224.safetensors", format="timm")

or in a config: ``model.init_from: {path: ..., format: timm}`` (applied by the trainer through
:func:`apply_init_from`). The returned :class:`LoadReport` lists
every key as loaded, resampled, initialised or ignored, and is logged on ``mmvit.pretrained``.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch.nn as nn

from mmvit.checkpoint import read_state_dict
from mmvit.pretrained.load import ConversionPlan, apply_plan, convert_mmvit
from mmvit.pretrained.report import LoadReport
from mmvit.pretrained.timm import convert_timm, timm_vit_config

# format name -> converter(state, model, **options) -> ConversionPlan
FORMATS: dict[str, Callable[..., ConversionPlan]] = {"timm": convert_timm, "mmvit": convert_mmvit}


def load_pretrained(model: nn.Module, path: str, format: Literal["timm", "mmvit"] = "timm", *,
                    strict_shapes: bool = True, **options) -> LoadReport:
    """Load the checkpoint at ``path`` into ``model`` (in place) as far as it fits; report every key.

    Args:
        model: an mmvit trunk (any config: missing parts stay initialised, surplus tensors are ignored).
        path: ``.safetensors``, or ``.pth/.pt/.bin`` (read with ``weights_only=True``).
        format: ``timm`` (a timm ViT state dict) or ``mmvit`` (an mmvit export).
        strict_shapes: raise on tensors that fit neither as they are nor resized (the default), naming
            each with both shapes; when False they are initialised and reported. A head of another size
            is always initialised.
        options: format options, e.g. ``grid_size=(gh, gw)`` for a timm checkpoint with a non-square grid.

    Raises:
        KeyError: unknown format. ValueError: shapes that do not fit (see ``strict_shapes``).
    """
    if format not in FORMATS:
        raise KeyError(f"unknown pretrained format {format!r}; known: {sorted(FORMATS)}")
    state = read_state_dict(path)
    plan = FORMATS[format](state, model, **options)
    return apply_plan(model, plan, list(state), path=path, format=format, strict_shapes=strict_shapes)


def apply_init_from(model: nn.Module) -> LoadReport | None:
    """Load ``model.cfg.init_from`` (``{path, format, ...}``) into ``model`` when the config names one; the
    report is also kept as ``model.pretrained_report`` for the trainer's log. Called by whoever builds a
    model for training; ``mmvit.build_model`` itself never loads pretrained weights."""
    init_from = getattr(getattr(model, "cfg", None), "init_from", None)
    if not init_from:
        return None
    model.pretrained_report = load_pretrained(model, **init_from)
    return model.pretrained_report


__all__ = ["load_pretrained", "apply_init_from", "LoadReport", "timm_vit_config", "read_state_dict", "FORMATS"]

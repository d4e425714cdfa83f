"""The objective interface and its builder (see the package docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import torch
import torch.nn as nn

from mmvit.packing import PackedBatch
from mmvit.registry import OBJECTIVES


@dataclasses.dataclass
class ObjectiveOutput:
    """What one micro-batch gives the trainer.

    Attributes:
        losses: ``[E]`` per-example losses (float32), in ``batch.example_ids`` order.
        sums: per-step counters summed over micro-batches and ranks (``{"top1": correct}``); the loop reports
            ``sum / examples`` as ``train_<name>``.
    """

    losses: torch.Tensor
    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class Objective(nn.Module):
    """Base class: subclasses set ``self.model`` and implement ``forward(batch) -> ObjectiveOutput``.

    ``uses_labels``: whether batches must carry labels (the run then fixes class tables and sizes heads).
    """

    model: nn.Module
    uses_labels: bool = True

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def token_weights(self, batch: PackedBatch) -> torch.Tensor:
        """``[E]`` weight of each example under ``train.loss_norm: tokens``, known before the forward (the
        global count is all-reduced before the first backward): its tokens in the batch by default."""
        return batch.lengths

    def no_weight_decay(self) -> set[str]:
        """The model's no-decay parameters, named as this module names them."""
        inner = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        prefix = next(name for name, m in self.named_children() if m is self.model)
        return {f"{prefix}.{n}" for n in inner}

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every applied optimizer step (JEPA's target encoder update)."""

    def export_model(self) -> nn.Module:
        """The module written by the export at the end of training (the trained model by default)."""
        return self.model

    def export_prefix(self, online: bool = False) -> str:
        """The name of :meth:`export_model` inside this module (``model.`` keys of its state dict); ``online``:
        that of the trained model itself (JEPA's context encoder rather than its target encoder)."""
        target = self.model if online else self.export_model()
        return next(name for name, m in self.named_modules() if m is target) + "."


def _gathered(p: nn.Parameter):
    import deepspeed

    return deepspeed.zero.GatheredParameters([p], modifier_rank=0)


@torch.no_grad()
def restore_frozen(module: nn.Module, tag_dir: str) -> list[str]:
    """Copy the frozen parameters (``requires_grad=False``: JEPA's target encoder, an encoder's unused pooling)
    from the module state saved in ``tag_dir`` into ``module``; returns their names.

    A universal checkpoint (DeepSpeed's ds_to_universal) holds the optimizer's parameters only, and DeepSpeed
    does not load the module state when it resumes from one, so without this a frozen submodule would restart
    from its initial values. ZeRO 0-2 save frozen parameters whole in the module state; a ZeRO-3 save holds
    placeholders there and its whole values in the client state (``checkpoint.FROZEN_KEY``, rank 0's file).
    ``module`` may itself be ZeRO-3 partitioned: each parameter is then gathered, set and re-partitioned.
    """
    from mmvit import checkpoint as ckpt

    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    if not frozen:
        return []
    client = ckpt.client_state(tag_dir)
    whole = client.get(ckpt.FROZEN_KEY) or {}
    saved = client.get("module") or {}
    for name, p in frozen:
        value = whole.get(name, saved.get(name))
        shape = tuple(p.ds_shape) if hasattr(p, "ds_shape") else tuple(p.shape)
        if value is None or tuple(value.shape) != shape:
            raise ValueError(f"{tag_dir}: no whole saved value of the frozen parameter {name!r} (a ZeRO-3 "
                             f"checkpoint written before frozen parameters were saved whole keeps none); resume "
                             f"from the original checkpoint")
        # ZeRO-3: gather, set (every rank reads the same file), re-partition from rank 0's copy.
        with _gathered(p) if hasattr(p, "ds_tensor") else contextlib.nullcontext():
            p.copy_(value.to(p.dtype))
    return [n for n, _ in frozen]


def objective_type(cfg: Mapping | None) -> str:
    return str((cfg or {}).get("type", "classification"))


def build_objective(cfg: Mapping | None, model: nn.Module, **context) -> Objective:
    """``objective: {type: ..., ...}`` (default ``classification``) around ``model``. ``context`` holds what
    the run knows (e.g. ``task_weights``); an objective receives the entries its constructor takes."""
    import inspect

    import mmvit.objectives  # noqa: F401  (registers the built-in objectives)

    spec = dict(cfg or {})
    spec["type"] = objective_type(cfg)
    params = inspect.signature(OBJECTIVES.get(spec["type"])).parameters
    extra = {k: v for k, v in context.items() if k in params and k not in spec}
    return OBJECTIVES.build(spec, model=model, **extra)

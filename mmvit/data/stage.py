"""The shape of examples: the curriculum :class:`Stage` and the token plan of one example.

A stage is what a curriculum may change between batches without restarting the loader workers: the
resolution distribution (or a fixed token budget per example), the frames per clip and the patch size.
The data section's own values make the *full* stage; curricula (mmvit/train/curriculum.py) derive coarser
stages from it; the loader workers receive stages through shared memory as :meth:`Stage.to_dict` and plan
every example with :func:`plan_tokens`; the epoch estimate uses the same function. This module is the only
place that turns a stage into sizes and token counts.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from mmvit.data.resolution import ResolutionConfig, fit_to_budget
from mmvit.packing import PatchSize, as_patch_size
from mmvit.typed import nearest

if TYPE_CHECKING:
    from mmvit.data.config import DataConfig

STAGE_KEYS = ("resolution", "frames", "patch_size", "token_budget", "name", "cost")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One curriculum stage.

    Attributes:
        resolution: the distribution each example's size is drawn from.
        frames: frames decoded per clip.
        patch_size: ``(pt, ph, pw)`` for every batch, or ``None`` to draw it per batch from data.patch_sizes.
        token_budget: tokens per example (over all its frames), instead of the resolution distribution.
        name: a label for logs ("full" for the data section's own shape).
        cost: expected tokens per example relative to the full stage (examples per step grow as 1 / cost).
    """

    resolution: ResolutionConfig
    frames: int
    patch_size: PatchSize | None = None
    token_budget: int | None = None
    name: str = "full"
    cost: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (shared memory, logs, checkpoints); :func:`make_stage` reads it back. A stage with a
        token budget has no resolution entry (the budget replaces it)."""
        out: dict[str, Any] = {"frames": self.frames, "name": self.name, "cost": self.cost,
                               "patch_size": None if self.patch_size is None else list(self.patch_size)}
        if self.token_budget is not None:
            out["token_budget"] = self.token_budget
        else:
            out["resolution"] = self.resolution.to_dict()
        return out

    def describe(self) -> str:
        size = (f"{self.token_budget} tokens/example" if self.token_budget is not None
                else f"resolution {self.resolution.to_dict()}")
        patch = f", patch {tuple(self.patch_size)}" if self.patch_size is not None else ""
        return f"{size}, {self.frames} frames{patch}"


def make_stage(cfg: DataConfig, spec: dict | Stage | None = None) -> Stage:
    """A stage from ``spec`` (keys of :data:`STAGE_KEYS`, missing ones from the data config), checked
    against the config: frames a multiple of every tubelet length, and a clip's time slices within the
    per-example token cap. ``None`` gives the full stage."""
    if isinstance(spec, Stage):
        spec = spec.to_dict()
    spec = dict(spec or {})
    for key in spec:
        if key not in STAGE_KEYS:
            raise KeyError(f"stage: unknown key {key!r}{nearest(key, STAGE_KEYS)}; valid keys: {list(STAGE_KEYS)}")
    frames = int(spec.get("frames") or cfg.frames)
    patch = spec.get("patch_size")
    patch = as_patch_size(patch, cfg.tubelet) if patch is not None else None
    budget = spec.get("token_budget")
    if budget is not None and spec.get("resolution") is not None:
        raise ValueError("a stage gives either resolution or token_budget, not both")
    if budget is not None and int(budget) < 1:
        raise ValueError(f"stage token_budget must be >= 1, got {budget}")
    for ps in [patch] if patch is not None else cfg.patch_list():
        if frames % ps[0]:
            raise ValueError(f"frames={frames} is not a multiple of the tubelet length {ps[0]} of patch size {ps} "
                             f"(the frames past the last whole tubelet would be decoded and thrown away)")
        if frames // ps[0] > cfg.token_cap:
            raise ValueError(f"frames={frames} at tubelet {ps[0]} needs {frames // ps[0]} tokens per example, "
                             f"more than the cap {cfg.token_cap} (seq_len / max_tokens)")
    resolution = spec.get("resolution")
    resolution = cfg.resolution if resolution is None else ResolutionConfig.parse(resolution, "stage.resolution")
    return Stage(resolution=resolution, frames=frames, patch_size=patch,
                 token_budget=None if budget is None else int(budget), name=str(spec.get("name", "full")),
                 cost=float(spec.get("cost", 1.0)))


def plan_tokens(stage: Stage, *, video: bool, box_hw: tuple[int, int], value: float, patch: PatchSize,
                token_cap: int) -> tuple[tuple[int, int], int, int]:
    """The size an example is resized to, the frames it decodes and its tokens before dropping.

    Args:
        stage: the current stage.
        video: a clip (``stage.frames`` frames, ``frames // pt`` time slices) or an image (one slice; an image
            given a ``pt > 1`` patch is repeated to ``pt`` frames by ``mmvit.pack``).
        box_hw: the crop (or full frame) that gets resized, in pixels.
        value: the value drawn from ``stage.resolution`` for this example.
        patch: the batch's ``(pt, ph, pw)``.
        token_cap: tokens one example may have (``DataConfig.token_cap``).

    Returns:
        ``((h, w), frames, tokens)``.
    """
    pt, ph, pw = patch
    frames = stage.frames if video else 1
    slices = frames // pt if video else 1
    if stage.token_budget is not None:
        budget = max(1, stage.token_budget // slices)
    else:
        budget = stage.resolution.budget(value, patch, slices)
    size = fit_to_budget(box_hw[0], box_hw[1], patch, min(budget, max(1, token_cap // slices)))
    return size, frames, slices * (size[0] // ph) * (size[1] // pw)


def mean_tokens(cfg: DataConfig, stage: Stage, *, video: bool, rate_fn=None, samples: int = 256,
                aspect: float = 1.0) -> float:
    """Expected kept tokens per example of one kind under ``stage`` (inputs of the given aspect ratio,
    large enough to be downscaled), estimated from ``samples`` draws with a fixed seed."""
    import torch

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    patches = [stage.patch_size] if stage.patch_size is not None else cfg.patch_list()
    box = (4096, max(1, round(4096 * aspect)))
    total = 0.0
    for _ in range(samples):
        patch = patches[int(rng.integers(len(patches)))]
        _, _, n = plan_tokens(stage, video=video, box_hw=box, value=stage.resolution.draw(rng), patch=patch,
                              token_cap=cfg.token_cap)
        total += n * (1.0 - (float(rate_fn(n, gen)) if rate_fn is not None else 0.0))
    return total / samples

"""Masks for masked pretraining: which tokens of an example the encoder sees.

- ``random`` (MAE, He et al. 2022): a uniformly random subset of the tokens is masked; 75% for images.
- ``tube`` (VideoMAE, Tong et al. 2022): one random spatial mask repeated at every time step, so a masked
  patch cannot be copied from the next frame; 90% for videos.
- ``multiblock`` (I-JEPA, Assran et al. 2023; V-JEPA, Bardes et al. 2024): the union of a few rectangular
  target blocks, each extended over all time steps (V-JEPA's temporal scale 1.0); the context (visible set) is
  the complement of the targets. V-JEPA builds its context this way. I-JEPA instead samples a separate context
  block (scale 0.85-1.0) and removes the targets from it; here images take V-JEPA's complement too, so one rule
  covers images and videos and every token is either context or target.

An example with grid ``(nt, nh, nw)`` has ``n = nt*nh*nw`` tokens in row-major ``(t, y, x)`` order. A mask is
the sorted ``LongTensor`` of its *visible* token indices, with at least one visible and one masked token (an
example of a single token cannot be masked and raises). Every function is pure: a grid and a
``numpy.random.Generator`` in, a mask out, so masks are reproducible from a seed (:func:`mask_rng`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import numpy as np
import torch

from mmvit.config import from_dict
from mmvit.token_drop import RateSpec, make_rate_fn

Grid = tuple[int, int, int]
MaskType = Literal["random", "tube", "multiblock"]
Kind = Literal["image", "video"]


def mask_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, *key)`` (e.g. step and example), not on worker sharding."""
    return np.random.default_rng([int(seed), *(int(k) for k in key)])


def _num_tokens(grid: Sequence[int]) -> int:
    nt, nh, nw = (int(g) for g in grid)
    if min(nt, nh, nw) < 1:
        raise ValueError(f"grid must have positive sizes, got {tuple(grid)}")
    n = nt * nh * nw
    if n < 2:
        raise ValueError(f"an example of grid {tuple(grid)} has {n} token: it cannot be split into visible and "
                         f"masked tokens; drop it or pack it at a smaller patch size")
    return n


def num_masked(n: int, ratio: float) -> int:
    """Tokens masked out of ``n`` at ``ratio``: rounded to nearest, at least one, at most ``n - 1``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return max(1, min(n - 1, int(math.floor(n * ratio + 0.5))))


def _visible(masked: np.ndarray) -> torch.Tensor:
    """Boolean ``[n]`` masked flags -> sorted visible indices."""
    return torch.from_numpy(np.flatnonzero(~masked)).long()


def random_mask(grid: Sequence[int], ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """MAE: ``num_masked(n, ratio)`` tokens chosen uniformly at random are masked."""
    n = _num_tokens(grid)
    masked = np.zeros(n, dtype=bool)
    masked[rng.permutation(n)[:num_masked(n, ratio)]] = True
    return _visible(masked)


def tube_mask(grid: Sequence[int], ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """VideoMAE: the same ``num_masked(nh*nw, ratio)`` spatial positions are masked at every time step.

    A grid with a single spatial position (``nh = nw = 1``) has no proper spatial mask; it falls back to
    :func:`random_mask` over its time steps.
    """
    nt, nh, nw = (int(g) for g in grid)
    _num_tokens(grid)
    if nh * nw < 2:
        return random_mask(grid, ratio, rng)
    spatial = np.zeros(nh * nw, dtype=bool)
    spatial[rng.permutation(nh * nw)[:num_masked(nh * nw, ratio)]] = True
    return _visible(np.tile(spatial, nt))


def _range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    lo_hi = tuple(float(v) for v in value)
    if len(lo_hi) != 2:
        raise ValueError(f"{name} must be a number or [low, high], got {value!r}")
    return lo_hi  # type: ignore[return-value]


def block_shape(nh: int, nw: int, scale: float, aspect: float) -> tuple[int, int]:
    """``(h, w)`` of a block covering ``scale`` of an ``nh x nw`` grid with ``h / w = aspect``.

    ``h = round(sqrt(scale*nh*nw * aspect))``, ``w = round(sqrt(scale*nh*nw / aspect))``, clipped to ``[1, nh]``
    and ``[1, nw]``: I-JEPA's and V-JEPA's formula, except that they floor the area ``scale*nh*nw`` first (on
    small grids that shrinks blocks well below the asked scale).
    """
    area = scale * nh * nw
    h = int(math.floor(math.sqrt(area * aspect) + 0.5))
    w = int(math.floor(math.sqrt(area / aspect) + 0.5))
    return max(1, min(nh, h)), max(1, min(nw, w))


def sample_blocks(nh: int, nw: int, rng: np.random.Generator, num_blocks: int, scale: float | Sequence[float],
                  aspect: float | Sequence[float]) -> list[tuple[int, int, int, int]]:
    """``num_blocks`` blocks ``(top, left, h, w)`` of one size, at uniformly random positions.

    Scale and aspect ratio are drawn uniformly from their ranges once per example and shared by its blocks
    (V-JEPA and I-JEPA draw them once per batch; packed examples have different grids, so here per example).
    """
    scale, aspect = _range(scale, "scale"), _range(aspect, "aspect")
    s = float(rng.uniform(scale[0], scale[1]))
    a = float(rng.uniform(aspect[0], aspect[1]))
    h, w = block_shape(nh, nw, s, a)
    tops = rng.integers(0, nh - h + 1, size=num_blocks)
    lefts = rng.integers(0, nw - w + 1, size=num_blocks)
    return [(int(t), int(left), h, w) for t, left in zip(tops, lefts)]


def multiblock_mask(grid: Sequence[int], rng: np.random.Generator, *, num_blocks: int = 4,
                    scale: float | Sequence[float] = (0.15, 0.2), aspect: float | Sequence[float] = (0.75, 1.5),
                    max_tries: int = 20) -> torch.Tensor:
    """JEPA: the union of ``num_blocks`` spatial blocks, extended over all time steps, is masked.

    Defaults are I-JEPA's image targets (4 blocks, scale 0.15-0.2, aspect 0.75-1.5). When the blocks cover
    the whole grid, new positions are drawn (V-JEPA redraws until the context is not empty), at most
    ``max_tries`` times; after that one random token is made visible (small grids, where one block may cover
    everything, never reach a non-empty context by redrawing).
    """
    nt, nh, nw = (int(g) for g in grid)
    n = _num_tokens(grid)
    for _ in range(max(1, max_tries)):
        spatial = np.zeros((nh, nw), dtype=bool)
        for top, left, h, w in sample_blocks(nh, nw, rng, num_blocks, scale, aspect):
            spatial[top:top + h, left:left + w] = True
        masked = np.tile(spatial.reshape(-1), nt)
        if not masked.all():
            return _visible(masked)
    masked[int(rng.integers(n))] = False
    return _visible(masked)


# -- config ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BlockSpec:
    """One multiblock generator: ``num_blocks`` target blocks of ``scale`` (fraction of the frame) and
    ``aspect`` (height / width) ranges. A single number stands for a fixed value."""

    num_blocks: int = 4
    scale: float | Sequence[float] = (0.15, 0.2)
    aspect: float | Sequence[float] = (0.75, 1.5)

    def __post_init__(self):
        self.scale = _range(self.scale, "scale")
        self.aspect = _range(self.aspect, "aspect")
        if self.num_blocks < 1:
            raise ValueError(f"mask blocks: num_blocks must be >= 1, got {self.num_blocks}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"mask blocks: scale must lie in (0, 1], got {self.scale}")
        if not 0.0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"mask blocks: aspect must be positive, got {self.aspect}")


@dataclasses.dataclass
class KindMaskConfig:
    """How one kind of example (images or videos) is masked.

    ``ratio`` (random, tube): the masked fraction, a constant or a ``mmvit.token_drop`` rate spec
    (``{type: beta, mean: 0.75}``, ``{type: resolution, ...}``) drawn per example. ``blocks`` (multiblock):
    the generators; one is drawn uniformly per example. V-JEPA applies each of its two generators (short- and
    long-range) to every clip, as two context/target pairs; with one mask per packed example each generator
    is used for half of the examples.
    """

    type: MaskType = "random"
    ratio: RateSpec = 0.75
    blocks: list = dataclasses.field(default_factory=lambda: [BlockSpec()])

    def __post_init__(self):
        if self.type not in ("random", "tube", "multiblock"):
            raise ValueError(f"mask type must be random, tube or multiblock, got {self.type!r}")
        self.blocks = [b if isinstance(b, BlockSpec) else from_dict(BlockSpec, b, "mask blocks")
                       for b in self.blocks]
        if self.type == "multiblock" and not self.blocks:
            raise ValueError("multiblock masks need at least one entry in blocks")
        if isinstance(self.ratio, (int, float)):
            if not 0.0 < float(self.ratio) < 1.0:
                raise ValueError(f"mask ratio must be in (0, 1), got {self.ratio}")
        else:
            make_rate_fn(self.ratio)  # a bad spec raises here, not in a loader worker


# Defaults: MAE 75% random for images (He et al. 2022), VideoMAE 90% tubes for videos (Tong et al. 2022);
# I-JEPA's 4 target blocks at scale 0.15-0.2 for images, V-JEPA's short-range (8 blocks, scale 0.15) and
# long-range (2 blocks, scale 0.7) generators for videos, aspect 0.75-1.5 everywhere.
PRESETS: dict[str, dict[str, dict]] = {
    "mae": {"image": {"type": "random", "ratio": 0.75},
            "video": {"type": "tube", "ratio": 0.9}},
    "jepa": {"image": {"type": "multiblock", "blocks": [{"num_blocks": 4, "scale": [0.15, 0.2]}]},
             "video": {"type": "multiblock", "blocks": [{"num_blocks": 8, "scale": 0.15},
                                                        {"num_blocks": 2, "scale": 0.7}]}},
}


@dataclasses.dataclass
class MaskConfig:
    """The ``mask:`` section: a preset and per-kind overrides (merged key by key over the preset's).

    After construction ``image`` and ``video`` are :class:`KindMaskConfig`.
    """

    preset: Literal["mae", "jepa"] = "mae"
    image: KindMaskConfig | dict | None = None
    video: KindMaskConfig | dict | None = None
    max_tries: int = 20  # multiblock redraws when the targets cover everything

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"mask.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for kind in ("image", "video"):
            value = getattr(self, kind)
            if not isinstance(value, KindMaskConfig):
                spec = dict(PRESETS[self.preset][kind])
                if value and "type" in value and value["type"] != spec["type"]:
                    spec = {}  # another type: the preset's other keys belong to the old one
                spec.update(value or {})
                setattr(self, kind, from_dict(KindMaskConfig, spec, f"mask.{kind}"))

    @classmethod
    def from_dict(cls, data: dict | None) -> "MaskConfig":
        return from_dict(cls, data, "mask")


def _ratio(cfg: KindMaskConfig, n: int, rng: np.random.Generator) -> float:
    if isinstance(cfg.ratio, (int, float)):
        return float(cfg.ratio)
    # Built per call, not stored: the config stays picklable for spawned loader workers (rate functions are
    # closures). token_drop's rate functions draw from a torch generator: seed one from this example's.
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    return float(make_rate_fn(cfg.ratio)(n, gen))  # type: ignore[misc]


def plan_mask(grid: Sequence[int], kind: Kind, cfg: MaskConfig, rng: np.random.Generator) -> torch.Tensor:
    """The visible tokens of one example of ``kind`` (``"image"`` or ``"video"``) under ``cfg``."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be image or video, got {kind!r}")
    k: KindMaskConfig = getattr(cfg, kind)
    if k.type == "multiblock":
        spec = k.blocks[int(rng.integers(len(k.blocks)))] if len(k.blocks) > 1 else k.blocks[0]
        return multiblock_mask(grid, rng, num_blocks=spec.num_blocks, scale=spec.scale, aspect=spec.aspect,
                               max_tries=cfg.max_tries)
    n = _num_tokens(grid)
    ratio = _ratio(k, n, rng)
    return random_mask(grid, ratio, rng) if k.type == "random" else tube_mask(grid, ratio, rng)

"""Aspect-preserving resolution sampling (NaViT, Dehghani et al. 2023; NaFlex, SigLIP 2).

Each example draws a side length ``r`` (or directly a token budget) from a distribution; with side lengths
the budget is area-preserving, ``(r / ph) * (r / pw)`` patches, as in NaViT's ``r ~ U(64, 256)``. The
example is then resized to the largest size of the same aspect ratio (up to rounding to whole patches)
whose patch count fits the budget, found by binary search as NaFlex does. Distributions:

- ``uniform``: ``U(min, max)`` (the NaViT default, 64..256).
- ``truncnorm``: a normal truncated to ``[min, max]``, by default centred on ``min`` so that small sizes are
  the most frequent (the variant NaViT found best).
- ``fixed``: a uniform choice from ``values`` (one value gives one fixed size, e.g. for evaluation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mmvit.config import from_dict


def _pair(patch: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(patch, int):
        return patch, patch
    ph, pw = (int(p) for p in patch[-2:])
    return ph, pw


def _grid(n_long: int, ratio: float) -> int:
    """Patches along the short axis for ``n_long`` along the long one (``ratio`` = short / long <= 1)."""
    return max(1, math.floor(n_long * ratio + 0.5))


def fit_to_budget(h: int, w: int, patch: int | Sequence[int], max_tokens: int) -> tuple[int, int]:
    """The largest ``(h2, w2)``, multiples of the patch size, with the aspect ratio of ``(h, w)`` and at most
    ``max_tokens`` patches.

    Sizes are parametrised by the number of patches ``n`` along the longer axis (in patch units); the
    shorter axis gets ``round(n * short / long)`` patches, at least one. The patch count grows with ``n``,
    so a binary search over ``n`` finds the largest that fits. Tiny inputs are scaled up (at least one
    patch), large ones down; the budget is at least one patch.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    ph, pw = _pair(patch)
    budget = max(1, int(max_tokens))
    gh, gw = h / ph, w / pw  # extent in patch units
    h_long = gh >= gw
    ratio = min(gh, gw) / max(gh, gw)
    lo, hi = 1, budget  # n = 1 always fits (1 x 1 patch)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid * _grid(mid, ratio) <= budget:
            lo = mid
        else:
            hi = mid - 1
    n_long, n_short = lo, _grid(lo, ratio)
    nh, nw = (n_long, n_short) if h_long else (n_short, n_long)
    return nh * ph, nw * pw


@dataclasses.dataclass
class ResolutionConfig:
    """A resolution distribution: the ``resolution:`` entry of the data config or of a curriculum stage.

    Attributes:
        type: ``uniform``, ``truncnorm`` or ``fixed``.
        mode: ``side`` (values are side lengths in pixels: each frame gets the area-preserving budget of an
            ``r x r`` image) or ``tokens`` (values are token budgets per example, over all its frames).
        min, max: range of ``uniform`` and ``truncnorm``.
        mean, std: of the normal before truncation (``truncnorm``); default ``min`` and ``(max - min) / 2``.
        values: the choices of ``fixed``.
    """

    type: Literal["uniform", "truncnorm", "fixed"] = "uniform"
    mode: Literal["side", "tokens"] = "side"
    min: float = 64
    max: float = 256
    mean: float | None = None
    std: float | None = None
    values: list[float] | None = None

    def __post_init__(self) -> None:
        if self.type not in ("uniform", "truncnorm", "fixed"):
            raise ValueError(f"resolution type must be uniform, truncnorm or fixed, got {self.type!r}")
        if self.mode not in ("side", "tokens"):
            raise ValueError(f"resolution mode must be side or tokens, got {self.mode!r}")
        if self.type == "fixed":
            if not self.values or min(self.values) <= 0:
                raise ValueError("resolution type fixed needs a non-empty list of positive values")
        elif not 0 < self.min <= self.max:
            raise ValueError(f"resolution needs 0 < min <= max, got min={self.min}, max={self.max}")
        if self.type != "truncnorm" and (self.mean is not None or self.std is not None):
            raise ValueError(f"mean/std only apply to resolution type truncnorm, not {self.type!r}")
        if self.type != "fixed" and self.values is not None:
            raise ValueError(f"values only apply to resolution type fixed, not {self.type!r}")
        if self.std is not None and self.std <= 0:
            raise ValueError(f"truncnorm std must be positive, got {self.std}")

    @classmethod
    def parse(cls, spec: dict | ResolutionConfig | float) -> ResolutionConfig:
        """From a dict; a bare number means one fixed side length."""
        if isinstance(spec, ResolutionConfig):
            return spec
        if isinstance(spec, (int, float)):
            return cls(type="fixed", values=[float(spec)])
        return from_dict(cls, spec, "data.resolution")

    def draw(self, rng: np.random.Generator) -> float:
        """One value (side length or token budget) from the distribution."""
        if self.type == "fixed":
            return float(self.values[int(rng.integers(len(self.values)))])
        if self.type == "uniform":
            return float(rng.uniform(self.min, self.max))
        mean = self.min if self.mean is None else self.mean
        std = (self.max - self.min) / 2 if self.std is None else self.std
        for _ in range(1000):  # rejection: acceptance is >= 1/3 for the default mean at the lower bound
            x = float(rng.normal(mean, std))
            if self.min <= x <= self.max:
                return x
        return float(np.clip(mean, self.min, self.max))

    def budget(self, value: float, patch: int | Sequence[int], time_slices: int = 1) -> int:
        """Spatial patches per time slice for a drawn value: ``(r / ph) * (r / pw)`` for a side length ``r``;
        a token budget is shared by the ``time_slices`` (frames / tubelet length) of a video."""
        if self.mode == "tokens":
            return max(1, int(value) // max(1, time_slices))
        ph, pw = _pair(patch)
        return max(1, int(value * value / (ph * pw)))

"""Aspect-preserving resolution sampling (NaViT, Dehghani et al. 2023; NaFlex, SigLIP 2).

Each example draws a side length ``r`` (or directly a token budget) from a distribution; with side lengths
the budget is area-preserving, ``(r / ph) * (r / pw)`` patches, as in NaViT's ``r ~ U(64, 256)``. The
example is then resized to the largest size of the same aspect ratio (up to rounding to whole patches)
whose patch count fits the budget, found by binary search as NaFlex does. Distributions:

- ``uniform``: ``U(min, max)`` (the NaViT default, 64..256).
- ``truncnorm``: a normal truncated to ``[min, max]``, by default centred on ``min`` so that small sizes are
  the most frequent (the variant NaViT found best).
- ``fixed``: a uniform choice from ``values`` (one value gives one fixed size, e.g. for evaluation).

:class:`ResolutionConfig` is the one place that knows these distributions: drawing, the budget a drawn
value gives, their moments (which the curricula use to cost a stage) and scaling them (multigrid's coarse
stages). The data config, the curriculum stages and the loader workers all hold one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from mmvit.packing import as_patch_size
from mmvit.typed import from_dict, num

# Rejection sampling of the truncated normal: acceptance is >= 1/3 for the default mean at the lower bound,
# so 1,000 tries fail with probability < (2/3)^1000; a distribution that still fails is far off its range.
_TRUNCNORM_TRIES = 1000
_MOMENT_POINTS = 512  # midpoint rule for the truncated normal's moments


def _grid(n_long: int, ratio: float) -> int:
    """Patches along the short axis for ``n_long`` along the long one (``ratio`` = short / long <= 1)."""
    return max(1, math.floor(n_long * ratio + 0.5))


def fit_to_budget(h: int, w: int, patch, max_tokens: int) -> tuple[int, int]:
    """The largest ``(h2, w2)``, multiples of the patch size, with the aspect ratio of ``(h, w)`` and at most
    ``max_tokens`` patches.

    Sizes are parametrised by the number of patches ``n`` along the longer axis (in patch units); the
    shorter axis gets ``round(n * short / long)`` patches, at least one. The patch count grows with ``n``,
    so a binary search over ``n`` finds the largest that fits. Tiny inputs are scaled up (at least one
    patch), large ones down; the budget is at least one patch.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    _, ph, pw = as_patch_size(patch)
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


@dataclasses.dataclass(frozen=True)
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
    min: float = num(64, gt=0)
    max: float = num(256, gt=0)
    mean: float | None = None
    std: float | None = num(None, gt=0)
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "fixed":
            if not self.values or min(self.values) <= 0:
                raise ValueError("resolution type fixed needs a non-empty list of positive values")
        elif self.min > self.max:
            raise ValueError(f"resolution needs min <= max, got min={self.min}, max={self.max}")
        if self.type != "truncnorm" and (self.mean is not None or self.std is not None):
            raise ValueError(f"mean/std only apply to resolution type truncnorm, not {self.type!r}")
        if self.type != "fixed" and self.values is not None:
            raise ValueError(f"values only apply to resolution type fixed, not {self.type!r}")

    @classmethod
    def parse(cls, spec: dict | ResolutionConfig | float, where: str = "data.resolution") -> ResolutionConfig:
        """From a dict; a bare number means one fixed side length."""
        if isinstance(spec, ResolutionConfig):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(type="fixed", values=(float(spec),))
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping or a number, got {spec!r}")
        return from_dict(cls, spec, where)

    def to_dict(self) -> dict:
        """The config entry (only the keys that matter for this type), JSON-able."""
        out: dict = {"type": self.type, "mode": self.mode}
        if self.type == "fixed":
            out["values"] = list(self.values)
        else:
            out.update(min=self.min, max=self.max)
            if self.mean is not None:
                out["mean"] = self.mean
            if self.std is not None:
                out["std"] = self.std
        return out

    # -- drawing ------------------------------------------------------------------------------------------
    def _normal(self) -> tuple[float, float]:
        mean = self.min if self.mean is None else self.mean
        std = (self.max - self.min) / 2 if self.std is None else self.std
        return mean, max(std, 1e-6)

    def draw(self, rng: np.random.Generator) -> float:
        """One value (side length or token budget) from the distribution."""
        if self.type == "fixed":
            return float(self.values[int(rng.integers(len(self.values)))])
        if self.type == "uniform":
            return float(rng.uniform(self.min, self.max))
        mean, std = self._normal()
        for _ in range(_TRUNCNORM_TRIES):
            x = float(rng.normal(mean, std))
            if self.min <= x <= self.max:
                return x
        return float(np.clip(mean, self.min, self.max))

    def budget(self, value: float, patch, time_slices: int = 1) -> int:
        """Spatial patches per time slice for a drawn value: ``(r / ph) * (r / pw)`` for a side length ``r``;
        a token budget is shared by the ``time_slices`` (frames / tubelet length) of a video."""
        if self.mode == "tokens":
            return max(1, int(value) // max(1, time_slices))
        _, ph, pw = as_patch_size(patch)
        return max(1, int(value * value / (ph * pw)))

    # -- moments and scaling (curricula) ---------------------------------------------------------------------
    def largest(self) -> float:
        """The largest value drawn, as a side length (``sqrt`` of a token budget)."""
        top = float(max(self.values)) if self.type == "fixed" else float(self.max)
        return math.sqrt(top) if self.mode == "tokens" else top

    def mean_cost(self) -> float:
        """``E[side^2]`` (what tokens per frame grow with), or ``E[tokens]`` in ``mode: tokens``."""
        tokens = self.mode == "tokens"
        if self.type == "fixed":
            return sum(v if tokens else v * v for v in self.values) / len(self.values)
        a, b = float(self.min), float(self.max)
        if self.type == "uniform":
            return (a + b) / 2 if tokens else (a * a + a * b + b * b) / 3
        mean, std = self._normal()
        xs = [a + (b - a) * (i + 0.5) / _MOMENT_POINTS for i in range(_MOMENT_POINTS)]
        ws = [math.exp(-0.5 * ((x - mean) / std) ** 2) for x in xs]
        return sum(w * (x if tokens else x * x) for w, x in zip(ws, xs)) / sum(ws)

    def scaled(self, factor: float, min_size: int = 1) -> ResolutionConfig:
        """Every side length times ``factor`` (token budgets times ``factor ** 2``), rounded to whole pixels
        (tokens), at least ``min_size``: ``{uniform, 64..256}`` x 0.5 is ``32..128``."""
        f = factor * factor if self.mode == "tokens" else factor

        def r(v: float) -> float:
            return float(max(min_size, round(v * f)))

        if self.type == "fixed":
            return dataclasses.replace(self, values=tuple(r(v) for v in self.values))
        return dataclasses.replace(self, min=r(self.min), max=r(self.max),
                                   mean=None if self.mean is None else r(self.mean),
                                   std=None if self.std is None else float(self.std) * f)

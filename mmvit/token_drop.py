"""Per-example token-drop rates (NaViT, Dehghani et al. 2023, section 3.3).

A rate function maps (number of tokens of an example, generator) to the fraction of its tokens to drop.
NaViT found a Beta-distributed rate better than a constant one, and a resolution-dependent rate (a normal
around a mean that grows linearly with the example's token count) better still. Dropping happens in
:func:`mmvit.pack` during training only; evaluation never drops. The same specs give the mask ratios of
masked pretraining (mmvit/pretrain).

Config forms: a float (constant rate), ``{type: constant, rate}``, ``{type: beta, mean, max}`` (rate =
``max * u``, ``u ~ Beta`` with mean ``mean`` and variance ``0.3 mean (1 - mean)``), ``{type: resolution,
min, max, min_tokens, max_tokens, std}`` (mean rate ``min`` at ``min_tokens`` rising linearly to ``max`` at
``max_tokens``, plus a normal of ``std``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Union

import numpy as np
import torch

from mmvit.typed import from_dict, num

RateFn = Callable[[int, Union[torch.Generator, None]], float]
RateSpec = Union[float, dict, RateFn, None]
MAX_RATE = 0.99  # drawn rates are clipped here: an example always keeps some tokens


@dataclasses.dataclass(frozen=True)
class DropRateConfig:
    """A rate spec as a typed config (see the module docstring for what each type reads)."""

    type: Literal["constant", "beta", "resolution"] = "constant"
    rate: float = num(0.0, ge=0.0, lt=1.0)
    mean: float = num(0.5, gt=0.0, lt=1.0)
    min: float = num(0.0, ge=0.0, lt=1.0)
    max: float = num(1.0, ge=0.0, le=1.0)
    min_tokens: int = num(0, ge=0)
    max_tokens: int = num(1, ge=1)
    std: float = num(0.02, ge=0.0)


def constant_rate(rate: float) -> RateFn:
    return lambda n, generator=None: rate


def beta_rate(mean: float, high: float = 1.0) -> RateFn:
    """rate = high * u, u ~ Beta with the given mean and variance 0.3 * mean * (1 - mean).

    For Beta(a, b): var = mean (1 - mean) / (a + b + 1), so a + b = 1 / 0.3 - 1.
    """
    total = 1.0 / 0.3 - 1.0
    a, b = mean * total, (1 - mean) * total

    def fn(n: int, generator: torch.Generator | None = None) -> float:
        # torch.distributions takes no generator: seed a numpy draw from the torch generator so that
        # packing stays reproducible under a seeded generator.
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        return min(high * float(np.random.default_rng(seed).beta(a, b)), MAX_RATE)

    return fn


def resolution_rate(low: float, high: float, min_tokens: int, max_tokens: int, std: float = 0.02) -> RateFn:
    """Mean rate linear in the token count from ``low`` (at ``min_tokens``) to ``high`` (at ``max_tokens``)."""

    def fn(n: int, generator: torch.Generator | None = None) -> float:
        frac = min(1.0, max(0.0, (n - min_tokens) / max(1, max_tokens - min_tokens)))
        rate = low + (high - low) * frac + std * float(torch.randn((), generator=generator))
        return min(MAX_RATE, max(0.0, rate))

    return fn


def make_rate_fn(spec: RateSpec, where: str = "drop_rate") -> RateFn | None:
    """Turn a config value into a rate function; ``None`` or 0 means no dropping."""
    if spec is None or (isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec == 0):
        return None
    if callable(spec):
        return spec
    if isinstance(spec, (int, float, str)) and not isinstance(spec, bool):
        spec = {"type": "constant", "rate": spec}
    if not isinstance(spec, (dict, DropRateConfig)):
        raise TypeError(f"{where}: cannot make a token drop rate from {spec!r}")
    c = spec if isinstance(spec, DropRateConfig) else from_dict(DropRateConfig, spec, where)
    if c.type == "constant":
        return constant_rate(c.rate)
    if c.type == "beta":
        return beta_rate(c.mean, c.max)
    return resolution_rate(c.min, c.max, c.min_tokens, c.max_tokens, c.std)


def num_kept(n: int, rate: float) -> int:
    """Tokens kept out of ``n`` at ``rate``: at least one, rounded to nearest."""
    return max(1, min(n, int(math.floor(n * (1.0 - rate) + 0.5))))

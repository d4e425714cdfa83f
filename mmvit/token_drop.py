"""Per-example token-drop rates (NaViT, Dehghani et al. 2023, section 3.3).

A rate function maps (number of tokens of an example, generator) to the fraction of its tokens to drop.
NaViT found a Beta-distributed rate better than a constant one, and a resolution-dependent rate (a normal
around a mean that grows linearly with the example's token count) better still. Dropping happens in
:func:`mmvit.pack` during training only; evaluation never drops.
"""

from __future__ import annotations

import builtins
import math
from typing import Callable, Union

import numpy as np
import torch

RateFn = Callable[[int, torch.Generator | None], float]
RateSpec = Union[float, dict, RateFn, None]


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def constant_rate(rate: float) -> RateFn:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"token drop rate must be in [0, 1), got {rate}")
    return lambda n, generator=None: rate


def beta_rate(mean: float, max: float = 1.0) -> RateFn:
    """rate = max * u, u ~ Beta with the given mean and variance 0.3 * mean * (1 - mean).

    For Beta(a, b): var = mean (1 - mean) / (a + b + 1), so a + b = 1 / 0.3 - 1.
    """
    if not 0.0 < mean < 1.0:
        raise ValueError(f"beta drop rate mean must be in (0, 1), got {mean}")
    total = 1.0 / 0.3 - 1.0
    a, b = mean * total, (1 - mean) * total

    def fn(n: int, generator: torch.Generator | None = None) -> float:
        # torch.distributions takes no generator: seed a numpy draw from the torch generator so that
        # packing stays reproducible under a seeded generator.
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        return min(max * float(np.random.default_rng(seed).beta(a, b)), 0.99)

    return fn


def resolution_rate(min: float, max: float, min_tokens: int, max_tokens: int, std: float = 0.02) -> RateFn:
    """Mean rate linear in the token count from ``min`` (at ``min_tokens``) to ``max`` (at ``max_tokens``)."""

    def fn(n: int, generator: torch.Generator | None = None) -> float:
        frac = (n - min_tokens) / builtins.max(1, max_tokens - min_tokens)
        mean = min + (max - min) * float(torch.tensor(frac).clamp(0, 1))
        rate = mean + std * float(torch.randn((), generator=generator))
        return float(torch.tensor(rate).clamp(0.0, 0.99))

    return fn


def make_rate_fn(spec: RateSpec) -> RateFn | None:
    """Turn a config value into a rate function; ``None`` or 0 means no dropping."""
    if spec is None or (isinstance(spec, (int, float)) and spec == 0):
        return None
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)):
        return constant_rate(float(spec))
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = spec.pop("type", "constant")
        builders = {"constant": constant_rate, "beta": beta_rate, "resolution": resolution_rate}
        if kind not in builders:
            raise KeyError(f"unknown token drop type {kind!r}; choose from {sorted(builders)}")
        return builders[kind](**spec)
    raise TypeError(f"cannot make a token drop rate from {spec!r}")


def num_kept(n: int, rate: float) -> int:
    """Tokens kept out of ``n`` at ``rate``: at least one, rounded to nearest."""
    return max(1, min(n, int(math.floor(n * (1.0 - rate) + 0.5))))

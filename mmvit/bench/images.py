"""Mixed-resolution inputs for the benchmarks: NaViT's resolution sampling over a mix of aspect ratios.

NaViT (Dehghani et al. 2023) pre-trains with an aspect-preserving side length ``r ~ U(64, 256)``. Here an
image of side ``r`` and aspect ``a = w / h`` has the area of an ``r x r`` square: ``h = r / sqrt(a)``,
``w = r * sqrt(a)``, each floored to whole patches (at least one). At patch 16 that is 9 to 252 tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Aspect ratios (w:h) and weights: an assumed mix for photo collections, landscape 4:3 the most common.
ASPECT_MIX: dict[tuple[int, int], float] = {
    (4, 3): 0.30, (16, 9): 0.20, (3, 4): 0.15, (1, 1): 0.15, (3, 2): 0.10, (9, 16): 0.10,
}


def sample_sizes(n: int, *, seed: int = 0, side: tuple[int, int] = (64, 256), patch: int = 16
                 ) -> list[tuple[int, int]]:
    """``n`` image sizes ``(h, w)``, multiples of ``patch``."""
    rng = np.random.default_rng(seed)
    ratios = list(ASPECT_MIX)
    weights = np.array([ASPECT_MIX[r] for r in ratios])
    pick = rng.choice(len(ratios), size=n, p=weights / weights.sum())
    sides = rng.uniform(side[0], side[1], size=n)
    sizes = []
    for r, k in zip(sides.tolist(), pick.tolist()):
        aw, ah = ratios[k]
        s = math.sqrt(aw / ah)
        h = max(patch, int(r / s) // patch * patch)
        w = max(patch, int(r * s) // patch * patch)
        sizes.append((h, w))
    return sizes


def token_counts(sizes: list[tuple[int, int]], patch: int = 16) -> list[int]:
    return [(h // patch) * (w // patch) for h, w in sizes]


def make_images(sizes: list[tuple[int, int]], *, seed: int = 0, channels: int = 3) -> list[torch.Tensor]:
    """Random ``C x h x w`` float images (content does not change any timing here)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, h, w, generator=gen) for h, w in sizes]

"""Position embeddings for packed tokens (NaViT, Dehghani et al. 2023, section 3.1 and figure 8).

Factorized embeddings (``learned``, ``sinusoidal``, ``fourier``) embed each axis (t, y, x) separately and
sum, which NaViT found best. Each takes absolute patch coordinates or fractional ones (coordinate divided
by the example's grid extent along that axis), so that embeddings carry over between resolutions.
``grid2d`` is one learned 2D grid resampled per example (bilinear, antialiased), the layout of a ViT
checkpoint; a learned temporal table (zero-initialized) is added for videos.

Every module maps ``coords [N, 3]`` (long), ``extent [N, 3]`` (the example's grid per token), and
``example [N]`` / ``grid [E, 3]`` (used by ``grid2d``) to ``[N, D]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from mmvit.models.dtypes import upcast
from mmvit.models.gather import gather_rows
from mmvit.ops.resize import resample_grid
from mmvit.registry import POS_EMBEDS


class PosEmbed(nn.Module):
    def forward(self, coords: torch.Tensor, extent: torch.Tensor, example: torch.Tensor, grid: torch.Tensor
                ) -> torch.Tensor:
        raise NotImplementedError


def fractional(coords: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Coordinate / extent in [0, 1): position as a fraction of the example's size along each axis."""
    return coords.float() / extent.clamp(min=1).float()


@POS_EMBEDS.register("learned")
class LearnedFactorized(PosEmbed):
    """One learned table per axis, summed. ``max_len`` = (frames, rows, cols) the tables cover.

    Fractional mode quantizes ``coord / extent`` into the table: ``floor(frac * max_len)``.
    """

    def __init__(self, dim: int, max_len: Sequence[int] = (32, 64, 64), fractional: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.max_len, self.fractional = tuple(max_len), fractional
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(n, dim, device=device, dtype=dtype)) for n in self.max_len])
        for i, t in enumerate(self.tables):
            # The temporal table starts at zero: videos start out embedded like their frames.
            nn.init.zeros_(t) if i == 0 else nn.init.trunc_normal_(t, std=0.02)

    def forward(self, coords, extent, example, grid):
        if self.fractional:
            idx = (fractional(coords, extent) * torch.tensor(self.max_len, device=coords.device)).long()
        else:
            idx = coords
            too_big = (idx.max(0).values + 1).tolist() if idx.numel() else [0, 0, 0]
            for axis, (need, have) in enumerate(zip(too_big, self.max_len)):
                if need > have:
                    raise ValueError(f"learned position embedding covers {have} positions along axis "
                                     f"{'tyx'[axis]} but the batch needs {need}; raise pos_embed.max_len or "
                                     f"use fractional: true")
        return sum(gather_rows(table, idx[:, a]) for a, table in enumerate(self.tables))


def sincos(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids: ``pos [N]`` (float) -> ``[N, dim]`` = [sin(pos w_i), cos(pos w_i)]."""
    half = dim // 2
    omega = temperature ** (-torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    angle = pos.float()[:, None] * omega[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


@POS_EMBEDS.register("sinusoidal")
class Sinusoidal(PosEmbed):
    """Fixed sinusoids per axis, summed. Fractional positions are scaled by ``scale`` before embedding."""

    def __init__(self, dim: int, fractional: bool = False, scale: float = 64.0, temperature: float = 10000.0,
                 device=None, dtype=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal position embedding needs an even width, got {dim}")
        self.dim, self.fractional, self.scale, self.temperature = dim, fractional, scale, temperature

    def forward(self, coords, extent, example, grid):
        pos = fractional(coords, extent) * self.scale if self.fractional else coords.float()
        return sum(sincos(pos[:, a], self.dim, self.temperature) for a in range(3))


@POS_EMBEDS.register("fourier")
class Fourier(PosEmbed):
    """Learned Fourier features (Li et al. 2021) per axis: [cos(p W), sin(p W)] summed, then a linear map."""

    def __init__(self, dim: int, fractional: bool = False, scale: float = 64.0, sigma: float = 0.1,
                 device=None, dtype=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"fourier position embedding needs an even width, got {dim}")
        self.fractional, self.scale = fractional, scale
        self.freqs = nn.Parameter(torch.randn(3, dim // 2, device=device, dtype=dtype) * sigma)
        self.proj = nn.Linear(dim, dim, bias=False, device=device, dtype=dtype)

    def forward(self, coords, extent, example, grid):
        pos = fractional(coords, extent) * self.scale if self.fractional else coords.float()
        feats = 0
        for a in range(3):
            # Angles in fp32 whatever the weights' dtype: bf16 has 8 significant bits, so an angle between 32
            # and 64 rad would round to a multiple of 0.25 rad and neighbouring positions would blur together.
            angle = pos[:, a, None] * upcast(self.freqs[a])[None, :]
            feats = feats + torch.cat([angle.cos(), angle.sin()], dim=1)
        return self.proj((feats / math.sqrt(self.freqs.shape[1])).to(self.proj.weight.dtype))


@POS_EMBEDS.register("grid2d")
class Grid2d(PosEmbed):
    """A learned ``[gh, gw, D]`` grid resampled to each example's ``(nh, nw)``, plus a temporal table."""

    def __init__(self, dim: int, grid_size: Sequence[int] = (14, 14), max_frames: int = 32,
                 mode: str = "bilinear", antialias: bool = True, device=None, dtype=None):
        super().__init__()
        gh, gw = grid_size
        self.mode, self.antialias = mode, antialias
        self.grid = nn.Parameter(torch.empty(gh, gw, dim, device=device, dtype=dtype))
        self.temporal = nn.Parameter(torch.zeros(max_frames, dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.grid, std=0.02)

    def forward(self, coords, extent, example, grid):
        # One resampled table per distinct (nh, nw) in the batch, concatenated: token index =
        # offset of its shape + y * nw + x.
        shapes, shape_id = torch.unique(grid[:, 1:], dim=0, return_inverse=True)
        tables, offsets, off = [], [], 0
        for nh, nw in shapes.tolist():
            tables.append(resample_grid(self.grid, (nh, nw), self.mode, self.antialias).reshape(nh * nw, -1))
            offsets.append(off)
            off += nh * nw
        table = torch.cat(tables)
        offsets_t = torch.tensor(offsets, device=coords.device)
        sid = shape_id[example]
        idx = offsets_t[sid] + coords[:, 1] * shapes[sid, 1] + coords[:, 2]
        if coords[:, 0].numel() and int(coords[:, 0].max()) >= self.temporal.shape[0]:
            raise ValueError(f"grid2d position embedding covers {self.temporal.shape[0]} frames; "
                             f"the batch has {int(coords[:, 0].max()) + 1}")
        return gather_rows(table, idx) + gather_rows(self.temporal, coords[:, 0])

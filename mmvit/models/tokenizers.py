"""Tokenizers: the only place where pixels become tokens.

- ``patch2d``: linear patch embedding with a kernel kept at a base patch size and PI-resized to the patch
  size of the batch (FlexiViT, Beyer et al. 2023). Videos are embedded frame by frame (pt = 1), the frame
  index being the token's ``t`` (ViViT's "uniform frame sampling").
- ``tubelet``: ``t x p x p`` spatio-temporal patches (ViViT, Arnab et al. 2021), with ``init`` telling how
  a 2D kernel is turned into a tubelet kernel when one is loaded: ``inflate`` or ``central_frame``.
- ``central_frame``: the tubelet with central-frame init (ViViT's best: 79.2 vs 77.6 top-1 on K400).

Input: ``[N, C*pt*ph*pw]`` flattened patches (``PackedBatch.patches`` layout), output ``[N, D]``.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn as nn

from mmvit.ops.resize import inflate_kernel, pi_resize
from mmvit.packing import as_patch_size
from mmvit.registry import TOKENIZERS


class _LinearPatchEmbed(nn.Module):
    """A conv kernel ``[D, C, t, ph, pw]`` applied as a matmul to flattened patches."""

    def __init__(self, dim: int, in_chans: int, patch_size: int | Sequence[int], frames: int, bias: bool,
                 device=None, dtype=None):
        super().__init__()
        _, ph, pw = as_patch_size(patch_size)
        self.dim, self.in_chans, self.frames = dim, in_chans, frames
        self.weight = nn.Parameter(torch.empty(dim, in_chans, frames, ph, pw, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype)) if bias else None
        # LeCun-normal on the fan-in, as for a ViT patch embedding.
        fan_in = in_chans * frames * ph * pw
        nn.init.trunc_normal_(self.weight, std=math.sqrt(1.0 / fan_in))

    @property
    def base_patch_size(self) -> tuple[int, int, int]:
        """``(pt, ph, pw)`` of the kernel as stored (what masked autoencoding reconstructs)."""
        return tuple(self.weight.shape[2:])  # type: ignore[return-value]

    def kernel(self, patch_size: tuple[int, int, int]) -> torch.Tensor:
        """The kernel for the batch's patch size ``(pt, ph, pw)``: ``[D, C*pt*ph*pw]``."""
        pt, ph, pw = patch_size
        if pt != self.frames:
            raise ValueError(f"{type(self).__name__} embeds {self.frames}-frame patches but the batch was packed "
                             f"with pt={pt}; pack with patch_size=({self.frames}, {ph}, {pw})")
        w = pi_resize(self.weight, (ph, pw))
        return w.reshape(self.dim, -1)

    def forward(self, patches: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
        w = self.kernel(patch_size)
        out = patches.to(w.dtype) @ w.T
        return out + self.bias if self.bias is not None else out


@TOKENIZERS.register("patch2d")
class Patch2d(_LinearPatchEmbed):
    def __init__(self, dim: int, in_chans: int = 3, patch_size: int | Sequence[int] = 16, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(dim, in_chans, patch_size, 1, bias, device, dtype)

    def load_2d(self, kernel_2d: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Load a 2D kernel ``[D, C, ph, pw]`` (PI-resized if its patch size differs)."""
        with torch.no_grad():
            self.weight.copy_(pi_resize(kernel_2d, self.weight.shape[-2:]).unsqueeze(2))
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)


@TOKENIZERS.register("tubelet")
class Tubelet(_LinearPatchEmbed):
    def __init__(self, dim: int, in_chans: int = 3, patch_size: int | Sequence[int] = 16, frames: int = 2,
                 init: Literal["random", "inflate", "central_frame"] = "central_frame", bias: bool = True,
                 device=None, dtype=None):
        super().__init__(dim, in_chans, patch_size, frames, bias, device, dtype)
        self.init_mode = init
        if init != "random":
            # Start as an image model would: a random 2D kernel inflated over time.
            with torch.no_grad():
                self.weight.copy_(inflate_kernel(self.weight[:, :, 0] * math.sqrt(frames), frames, init))

    def load_2d(self, kernel_2d: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Inflate a 2D kernel ``[D, C, ph, pw]`` into this tubelet (``init``; ``random`` inflates too)."""
        mode = "inflate" if self.init_mode == "random" else self.init_mode
        with torch.no_grad():
            k = pi_resize(kernel_2d, self.weight.shape[-2:])
            self.weight.copy_(inflate_kernel(k, self.frames, mode))
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)


@TOKENIZERS.register("central_frame")
class CentralFrame(Tubelet):
    def __init__(self, dim: int, in_chans: int = 3, patch_size: int | Sequence[int] = 16, frames: int = 2,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(dim, in_chans, patch_size, frames, "central_frame", bias, device, dtype)

"""Resizing of patch kernels (FlexiViT PI-resize) and of position-embedding grids.

PI-resize (Beyer et al. 2023, "FlexiViT", section 3.4): a kernel ``w_p`` learned on ``p x p`` patches is
moved to ``q x q`` patches as ``w_q = pinv(B^T) w_p``, where ``B`` (``q*q x p*p``) is the linear map of a
bilinear resize from ``p x p`` to ``q x q``. When ``q >= p`` this is exact: ``<B x, w_q> = <x, w_p>`` for
every patch ``x``, so resizing an image and its kernel together leaves the embedding unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def resize_2d(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """Resize the last two dims of ``x`` (any leading dims) to ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, *x.shape[-2:])
    # antialias only applies to (bi)linear/bicubic; align_corners=False matches image resizing elsewhere.
    y = F.interpolate(y, size=size, mode=mode, align_corners=False, antialias=antialias and mode != "nearest")
    return y.reshape(*lead, *size)


@functools.lru_cache(maxsize=64)
def _pinv_resize_matrix(src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """``pinv(B^T)`` of shape ``[dst_h*dst_w, src_h*src_w]`` in float64 (bounded cache: few patch sizes)."""
    n = src[0] * src[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *src)
    # Row i of bt is the resized basis image i: bt = B^T with shape [src, dst].
    bt = resize_2d(basis, dst).reshape(n, -1)
    return torch.linalg.pinv(bt)  # [dst, src]


def pi_resize(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PI-resize the last two dims of a patch kernel ``[..., ph, pw]`` to ``[..., qh, qw]``, differentiably."""
    src = tuple(int(s) for s in kernel.shape[-2:])
    size = (int(size[0]), int(size[1]))
    if src == size:
        return kernel
    mat = _pinv_resize_matrix(src, size).to(device=kernel.device, dtype=kernel.dtype)
    flat = kernel.reshape(-1, src[0] * src[1])
    return (flat @ mat.T).reshape(*kernel.shape[:-2], *size)


def resample_grid(grid: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = True
                  ) -> torch.Tensor:
    """Resample a position grid ``[gh, gw, D]`` to ``[h, w, D]`` (identity when the size is unchanged)."""
    if tuple(grid.shape[:2]) == tuple(size):
        return grid
    y = grid.permute(2, 0, 1).unsqueeze(0).float()
    y = F.interpolate(y, size=size, mode=mode, align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).to(grid.dtype)


def inflate_kernel(kernel_2d: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """ViViT (Arnab et al. 2021, section 3.4) tubelet init from a 2D kernel ``[D, C, ph, pw]``.

    ``inflate``: ``E = (1/t) [E2d, ..., E2d]``; ``central_frame``: ``E = [0, ..., E2d, ..., 0]`` with E2d at
    ``floor(t/2)``. Either way a clip of ``t`` identical frames embeds exactly like the image.
    Returns ``[D, C, t, ph, pw]``.
    """
    k = kernel_2d.unsqueeze(2)
    if mode == "inflate":
        return k.expand(-1, -1, frames, -1, -1) / frames
    if mode == "central_frame":
        out = torch.zeros(*k.shape[:2], frames, *k.shape[3:], dtype=k.dtype, device=k.device)
        out[:, :, frames // 2] = kernel_2d
        return out
    raise ValueError(f"unknown inflation mode {mode!r}; choose 'inflate' or 'central_frame'")

"""Block-diagonal self-attention over packed examples, four interchangeable backends.

Tokens arrive flat (``[N, H, d]``, see ``layout.py``); example ``i`` attends only to its own ``L_i`` tokens.

- ``segments`` (CPU default, exact): one SDPA call per distinct example length on contiguous views
  ``[n, H, l, d]``; cost ``sum(L_i^2)``, never ``N^2``. In bf16/fp16 on a CPU, two matmuls and an fp32
  softmax instead (SDPA's CPU kernel is slower there than in fp32).
- ``dense`` (reference): one SDPA call over the whole sequence with a boolean block-diagonal mask.
- ``xformers`` (CUDA): ``memory_efficient_attention`` with ``BlockDiagonalMask.from_seqlens``.
- ``flex`` (CUDA): PyTorch's FlexAttention with a document mask, compiled (``flex_attention.py``); refused on
  CPU, where it has no backward and its forward measured slower than ``segments``.

``auto`` picks ``xformers`` on CUDA when it imports, else ``segments``; never ``flex`` (it compiles on first
use, which only an explicit choice should cost).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.models import flex_attention, xformers_ops
from mmvit.models.dtypes import accum_dtype
from mmvit.models.layout import SeqLayout

Backend = Literal["auto", "xformers", "segments", "dense", "flex"]
BACKENDS = ("auto", "xformers", "segments", "dense", "flex")


# Score elements ([n, H, l, l] per group) up to which CPU bf16/fp16 attention runs as explicit matmuls: about
# 256 MB of fp32 scores, kept for the backward. Larger groups use SDPA's fused kernel, which never holds them.
MATMUL_MAX_SCORES = 2 ** 26


def sdpa_lowp_is_slow(q: torch.Tensor) -> bool:
    """Whether SDPA is the slow choice for these queries: bf16/fp16 on a CPU, where its fused kernel measured
    0.2-0.8x its own fp32 speed (docs/benchmarks.md, "Precision") while bf16 matmuls run 2.3x (AVX512-BF16) to
    4.8x (AMX) faster than fp32 ones."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)


def attention_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of ``[n, H, l, d]`` tensors with two matmuls in the inputs' dtype and the softmax in
    at least fp32 (its exponentials and row sums are where low precision loses most). ``[n, H, l, d]``."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5    # [n, H, l, l]
    weights = torch.softmax(scores, dim=-1, dtype=accum_dtype(scores.dtype))
    return weights.to(v.dtype) @ v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One group of equal-length examples, ``[n, H, l, d]``: SDPA, or the matmul path where SDPA is slow."""
    n, h, length, _ = q.shape
    if sdpa_lowp_is_slow(q) and n * h * length * length <= MATMUL_MAX_SCORES:
        return attention_matmul(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attend_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
    """Exact per-example attention, batched over examples of equal length. ``[N, H, d]`` -> ``[N, H, d]``."""
    h, d = q.shape[1:]
    if len(layout.groups) == 1:
        _, n, length = layout.groups[0]
        qs, ks, vs = (t.view(n, length, h, d).transpose(1, 2) for t in (q, k, v))
        return _attend(qs, ks, vs).transpose(1, 2).reshape(n * length, h, d)
    # One split per tensor, not a slice per group: a slice's backward writes a zero-filled [N, H, d] gradient
    # per group, a split's backward is one concatenation.
    sizes = layout.group_sizes
    outs = []
    for qs, ks, vs, (_, n, length) in zip(q.split(sizes), k.split(sizes), v.split(sizes), layout.groups):
        # [n*l, H, d] -> [n, H, l, d]
        qs, ks, vs = (t.view(n, length, h, d).transpose(1, 2) for t in (qs, ks, vs))
        outs.append(_attend(qs, ks, vs).transpose(1, 2).reshape(n * length, h, d))
    return torch.cat(outs)


def attend_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
    """Reference: one SDPA call over ``[1, H, N, d]`` with the ``[N, N]`` block-diagonal boolean mask."""
    qs, ks, vs = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=layout.dense_mask.to(q.device))
    return o[0].transpose(0, 1)


def attend_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
    return xformers_ops.attend(q, k, v, layout.xformers_bias)


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
    return flex_attention.attend(q, k, v, layout)


def resolve_backend(backend: Backend, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and xformers_ops.available():
        return "xformers"
    return "segments"


_FUNCS = {"segments": attend_segments, "dense": attend_dense, "xformers": attend_xformers, "flex": attend_flex}


class Attention(nn.Module):
    """Multi-head self-attention with optional query-key LayerNorm (ViT-22B, used by NaViT)."""

    def __init__(self, dim: int, heads: int, *, qk_norm: bool = True, bias: bool = False, eps: float = 1e-6,
                 backend: Backend = "auto", device=None, dtype=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        fk = {"device": device, "dtype": dtype}
        self.heads, self.head_dim, self.backend = heads, dim // heads, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias, **fk)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps, bias=bias, **fk) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps, bias=bias, **fk) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=bias, **fk)

    def forward(self, x: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)  # each [N, H, d]
        q, k = self.q_norm(q), self.k_norm(k)
        if q.dtype != v.dtype:
            # CUDA autocast runs layer_norm in fp32 (PyTorch AMP op reference) while the qkv linear gives bf16/fp16.
            # SDPA would cast by itself; xformers and FlexAttention refuse mixed dtypes. Cast as SDPA would.
            q, k = q.to(v.dtype), k.to(v.dtype)
        backend = resolve_backend(self.backend, x.device)
        o = _FUNCS[backend](q, k, v, layout)
        return self.proj(o.reshape(n, -1))

"""The only place mmvit touches xformers (imported lazily: ``import mmvit`` stays light).

xformers 0.0.35 keeps ``BlockDiagonalMask`` in ``xformers.ops.fmha.attn_bias``; its kernels need CUDA.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when xformers' attention imports (its import prints warnings on CPU builds: silence them)."""
    import contextlib
    import io
    import logging
    import warnings

    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("xformers").setLevel(logging.ERROR)
            import xformers.ops  # noqa: F401
            from xformers.ops.fmha.attn_bias import BlockDiagonalMask  # noqa: F401
        return True
    except Exception:
        return False


def block_diagonal_mask(seqlens: list[int]):
    if not available():
        raise RuntimeError("attention='xformers' needs xformers (pip install --no-deps xformers==0.0.35)")
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    return BlockDiagonalMask.from_seqlens(seqlens)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias) -> torch.Tensor:
    """``q, k, v``: ``[N, H, d]`` flat packed tokens -> ``[N, H, d]``."""
    import xformers.ops as xops

    if not q.is_cuda:
        raise RuntimeError("xformers attention kernels need CUDA; use attention='segments' on CPU")
    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]

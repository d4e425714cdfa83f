"""The only place mmvit touches xformers (imported lazily: ``import mmvit`` stays light).

xformers 0.0.35 keeps ``BlockDiagonalMask`` in ``xformers.ops.fmha.attn_bias``; ``memory_efficient_attention``
takes ``[B, M, H, K]`` tensors (B = 1 with a block-diagonal mask) and needs CUDA. The PyPI wheel of 0.0.35
declares ``torch>=2.10`` (0.0.34 and older pin one torch release exactly); its own C++/CUDA library is built
against torch 2.10 and CUDA 12.8 (the wheel's ``cpp_lib.json``), and links ``libcudart.so.12``. Under a CUDA 13
torch that library may not load, and xformers then dispatches to the operators that call torch's own kernels
(``cutlassF-pt``, ``fa2F-pt``, see ``python -m xformers.info``). ``kernels_usable`` runs one small forward and
backward so that a build that imports but cannot run is reported as such, not discovered mid-training.
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


def kernels_usable(device: torch.device | str = "cuda") -> str | None:
    """None when ``memory_efficient_attention`` with a ``BlockDiagonalMask`` runs forward and backward in bf16
    on ``device`` (and agrees with SDPA on each block); else the reason."""
    device = torch.device(device)
    if device.type != "cuda":
        return "xformers attention kernels need CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not available():
        return "xformers is not installed or does not import (pip install --no-deps xformers==0.0.35)"
    try:
        import torch.nn.functional as F

        seqlens = [5, 17, 40]
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(sum(seqlens), 2, 32, device=device, dtype=torch.bfloat16, generator=gen)
                   .requires_grad_() for _ in range(3))
        out = attend(q, k, v, block_diagonal_mask(seqlens, device))
        out.float().sum().backward()
        torch.cuda.synchronize(device)
        start = 0
        for n in seqlens:  # each block against SDPA over that block alone: [1, H, n, d]
            sl = slice(start, start + n)
            ref = F.scaled_dot_product_attention(*(t[sl].detach().float().transpose(0, 1)[None] for t in (q, k, v)))
            err = (out[sl].float() - ref[0].transpose(0, 1)).abs().max().item()
            if not err < 5e-2:
                return f"xformers memory_efficient_attention disagrees with SDPA on a block (max error {err:.3g})"
            start += n
        if not all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in (q, k, v)):
            return "xformers memory_efficient_attention backward gave no or non-finite gradients"
    except Exception as e:  # any failure to run means: not usable here, say why
        return f"xformers is installed but its attention kernels fail here: {type(e).__name__}: {e}"
    return None


def block_diagonal_mask(seqlens: list[int], device: torch.device | str | None = None):
    """``BlockDiagonalMask`` of examples of ``seqlens`` tokens; its offsets live on ``device`` (xformers' default:
    the current CUDA device when there is one, else the CPU)."""
    if not available():
        raise RuntimeError("attention='xformers' needs xformers (pip install --no-deps xformers==0.0.35)")
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    return BlockDiagonalMask.from_seqlens(seqlens, device=None if device is None else torch.device(device))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias) -> torch.Tensor:
    """``q, k, v``: ``[N, H, d]`` flat packed tokens -> ``[N, H, d]``."""
    import xformers.ops as xops

    if not q.is_cuda:
        raise RuntimeError("xformers attention kernels need CUDA; use attention='segments' on CPU")
    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]

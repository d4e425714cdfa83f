"""Where the model computes above its weights' precision.

With bf16/fp16 weights (DeepSpeed's mixed precision) the matmuls run in low precision, while sums over many
tokens, softmaxes and position angles run in fp32; fp32 and fp64 models (the references of the tests) keep
their own precision.
"""

from __future__ import annotations

import torch


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16, the dtype itself for fp32 and fp64."""
    return torch.promote_types(dtype, torch.float32)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`accum_dtype` of its dtype (no copy when it already is)."""
    return t.to(accum_dtype(t.dtype))

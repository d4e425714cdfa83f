"""Row gathers whose gradient is the same bits on every run (lookup tables, per-segment sums).

``table[idx]`` with repeated indices backpropagates through ``index_put_(accumulate=True)``. On CPU, with more
than one thread and at least ``GRAIN_SIZE`` (32768) elements, PyTorch runs that kernel in parallel with atomic
float adds (``index_put_kernel`` in aten/src/ATen/native/cpu/IndexKernel.cpp), so the order of the additions,
and with it the last bits of the gradient, changes between runs; only ``torch.use_deterministic_algorithms``
makes it serial. ``index_select`` backpropagates through ``index_add_``, whose CPU kernel adds in index order
(``index_add_cpu_out`` in aten/src/ATen/native/TensorAdvancedIndexing.cpp). On CUDA it is the other way round:
``index_put_`` with accumulation sorts the indices, ``index_add_`` uses atomics (the documentation of
``torch.use_deterministic_algorithms`` names ``index_put`` with ``accumulate=True`` on CPU and ``index_add`` on
CUDA among the operations it makes deterministic), so CUDA keeps ``table[idx]``.
"""

from __future__ import annotations

import torch


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for ``table [T, ...]`` and long ``idx [N]`` -> ``[N, ...]``, with a reproducible backward."""
    if table.device.type == "cpu":
        return table.index_select(0, idx)
    return table[idx]

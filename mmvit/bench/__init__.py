"""Benchmarks behind ``tools/benchmark.py`` (see docs/benchmarks.md).

Each module measures one thing and returns a :class:`~mmvit.bench.common.Report`: a table, the bars it is
judged by, and notes. Variants compared in one report run in the same process on the same inputs, after
warm-up, in interleaved rounds, and are summarised by their median.

- ``pack``: padding and examples per row of first-fit-decreasing packing (NaViT, Dehghani et al. 2023),
  one-shot and streaming, and the packer's speed.
- ``attention``: the ``segments`` backend against ``dense`` (block-diagonal mask), time and peak memory.
- ``step``: one training step of mmvit packed against padding and against vit-pytorch's NaViT, and the
  achieved GFLOP/s against a matmul peak measured in the same run.
- ``io``: packed batches/s of the data loader and decord against PyAV.
- ``gpu``: the ``xformers`` backend and model FLOP utilization (CUDA only).

Nothing here is imported by ``import mmvit``.
"""

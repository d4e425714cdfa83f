"""Process groups and the few collectives mmvit uses, for training (under DeepSpeed) and for the tools.

Every function works without a process group (a world of one), so the same code runs in one process, in
tests and under ``torchrun`` / ``deepspeed``. The training job's group is started by DeepSpeed
(``mmvit.train.engine.start``); tools that only evaluate start a plain one with :func:`start_tool_group`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (and returned)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def start_tool_group(local_rank_arg: int | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` for an evaluation tool; starts a gloo group when ``WORLD_SIZE > 1``
    (set by torchrun or the deepspeed launcher). ``LOCAL_RANK`` from the environment wins over
    ``--local_rank``. On CPU the ranks of one machine split its cores between them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
    if world <= 1:
        return 0, 1, local_rank
    if not dist.is_initialized():
        # gloo also on CUDA machines: only pickled CPU objects and CPU flags are exchanged.
        dist.init_process_group("gloo")
    if not torch.cuda.is_available():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    return dist.get_rank(), dist.get_world_size(), local_rank


def end_tool_group() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()

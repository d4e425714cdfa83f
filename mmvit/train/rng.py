"""Random-number state of a training process: seeding, and the states saved in every checkpoint.

Each rank saves its Python, NumPy, torch (and CUDA) generator states in the client state; a resume on the
same world size restores them, so drop-path and any other per-rank randomness continues as if the run had
never stopped. (Data randomness is counter-based and lives in the loader's own state.)
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict:
    """Python, NumPy, torch CPU and (if present) CUDA generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def pick_rank_state(states: list[Any] | None, rank: int, world_size: int) -> tuple[Any, bool]:
    """This rank's entry of a per-rank list saved by ``saved_world = len(states)`` ranks; the flag says
    whether the world size is unchanged (so the entry is truly this rank's)."""
    if not states:
        return None, False
    if len(states) == world_size:
        return states[rank], True
    return states[min(rank, len(states) - 1)], False


# -- reproducibility settings -------------------------------------------------------------------------------

def prepare_deterministic_env(deterministic: bool) -> None:
    """Before CUDA initialises: cuBLAS needs a fixed workspace to give the same bits run to run
    (https://docs.nvidia.com/cuda/cublas/#results-reproducibility); torch refuses deterministic mode on
    GPUs without it."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def default_threads(ranks_on_host: int) -> int:
    """Intra-op threads per rank so that all ranks of a host together use at most its (allowed) cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, ranks_on_host))


def configure(deterministic: bool, threads: int) -> None:
    """Thread count (a reduction split over another number of threads rounds differently) and, when
    ``deterministic``, torch's deterministic kernels. ``fill_uninitialized_memory`` is turned off: it costs a
    fill of every ``torch.empty`` and mmvit never reads memory it did not write."""
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

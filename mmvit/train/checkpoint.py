"""Checkpoint folders, completion markers, RNG states and retention (no DeepSpeed here; see engine.py).

Layout: ``RUN_DIR/checkpoints/global_step<N>/`` as written by ``engine.save_checkpoint`` (N = optimizer steps
done, skipped ones included), plus ``COMPLETE``, written by rank 0 only after every rank has returned from
the save (a barrier). A folder without ``COMPLETE`` was interrupted (``kill -9``, a node failure) and is
never resumed from: ``--resume auto`` takes the newest folder that has it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"
_TAG = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(path: str) -> int | None:
    m = _TAG.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def mark_complete(path: str, info: dict) -> None:
    """Write the marker atomically (a rename), after the data it vouches for is on disk."""
    tmp = os.path.join(path, MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({**info, "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MARKER))


def complete_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` of complete checkpoints, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        path = os.path.join(ckpt_dir, name)
        step = step_of(path)
        if step is not None and os.path.isdir(path) and is_complete(path):
            out.append((step, path))
    return sorted(out)


def newest_complete(ckpt_dir: str) -> str | None:
    found = complete_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune(ckpt_dir: str, keep: int, protect: str | None = None) -> list[str]:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete ones older than the newest
    complete one (left by a killed run). Rank 0 only, after the new marker is written."""
    done = complete_checkpoints(ckpt_dir)
    removed = []
    if keep > 0:
        for _, path in done[:-keep]:
            if path != protect:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    newest = done[-1][0] if done else None
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        path = os.path.join(ckpt_dir, name)
        step = step_of(path)
        if step is not None and newest is not None and step < newest and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def resolve_resume(resume: str | None, ckpt_dir: str) -> str | None:
    """``--resume``: ``auto`` (newest complete checkpoint, or None for a fresh start) or a checkpoint folder."""
    if not resume:
        return None
    if resume == "auto":
        return newest_complete(ckpt_dir)
    path = os.path.abspath(resume)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    return path


# -- RNG --------------------------------------------------------------------------------------------------

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

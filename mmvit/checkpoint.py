"""Checkpoints on disk: the one module that knows their layout.

A training run writes (tools/train.py)::

    RUN_DIR/config.yaml                          the resolved config (class tables included)
    RUN_DIR/classes.json                         the class table of every task
    RUN_DIR/model.safetensors                    final weights (+ model_ema.safetensors)
    RUN_DIR/checkpoints/latest                   DeepSpeed's pointer to the newest tag it saved
    RUN_DIR/checkpoints/global_step<N>/          ``engine.save_checkpoint`` (N = optimizer steps done)
        *model_states.pt                         module (ZeRO 0-2), client state, ds_config
        *optim_states.pt                         ZeRO optimizer shards (stages 1-3)
        COMPLETE                                 written by rank 0 after every rank returned from the save

A folder without ``COMPLETE`` was interrupted (``kill -9``, a node failure) and is never resumed from or
evaluated; DeepSpeed's ``latest`` may point at such a folder, so it is only used for checkpoints that
tools/train.py did not write. A *universal* checkpoint is a folder made by DeepSpeed's converter
(``python -m deepspeed.checkpoint.ds_to_universal``) for resuming on another world size.

Weights files are read here too: ``.safetensors``, or ``.pth/.pt/.bin`` with ``weights_only=True`` (no code
runs on load), with ``state_dict``/``model`` wrappers and ``module.`` prefixes removed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import re
import shutil
import time

import torch

log = logging.getLogger("mmvit.checkpoint")

MARKER = "COMPLETE"
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "model_ema.safetensors"
CONFIG_NAME = "config.yaml"
CLASSES_NAME = "classes.json"
CHECKPOINTS_DIR = "checkpoints"
CONFIG_KEY = "config"      # client-state key of the full config dict
CLASSES_KEY = "classes"    # client-state key of the class tables
FROZEN_KEY = "frozen"      # client-state key of the frozen parameters, whole (ZeRO-3 saves, rank 0's file)
_TAG = re.compile(r"^global_step(\d+)$")


# -- tags and completion markers --------------------------------------------------------------------------

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


def marker_info(path: str) -> dict:
    """What the marker of the checkpoint folder ``path`` records (step, world size, ZeRO stage, precision);
    ``{}`` for a folder without one (a universal checkpoint) or with an unreadable one."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


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


def is_universal(path: str) -> bool:
    """A folder written by ``python -m deepspeed.checkpoint.ds_to_universal`` (finished: it copies the model
    states files after the optimizer state)."""
    return (os.path.isfile(os.path.join(path, "zero", "optimizer_state.pt"))
            and any(f.startswith("mp_rank_") or "model_states" in f for f in os.listdir(path)))


def universal_info_key() -> str:
    """The client-state key DeepSpeed's universal-checkpoint converter requires in a checkpoint."""
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    return UNIVERSAL_CHECKPOINT_INFO


# -- finding what a path names ----------------------------------------------------------------------------

def _is_tag_dir(path: str) -> bool:
    return bool(glob.glob(os.path.join(path, "*model_states.pt")))


def resolve(checkpoint: str) -> tuple[str, str]:
    """``("weights", file)`` or ``("deepspeed", tag dir)`` for a path: a weights file; a run dir with
    ``model.safetensors``; a DeepSpeed tag dir; a save dir or a run dir with ``checkpoints/`` (its newest
    complete tag, else the one ``latest`` names)."""
    if os.path.isfile(checkpoint):
        return "weights", checkpoint
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    if os.path.isfile(os.path.join(checkpoint, WEIGHTS_NAME)):
        return "weights", os.path.join(checkpoint, WEIGHTS_NAME)
    if _is_tag_dir(checkpoint):
        return "deepspeed", os.path.abspath(checkpoint)
    for folder in (checkpoint, os.path.join(checkpoint, CHECKPOINTS_DIR)):
        newest = newest_complete(folder)
        if newest is not None:
            return "deepspeed", newest
        latest = os.path.join(folder, "latest")
        if os.path.isfile(latest):
            with open(latest) as f:
                return "deepspeed", os.path.join(os.path.abspath(folder), f.read().strip())
    raise FileNotFoundError(f"{checkpoint}: neither a weights file, nor a directory with {WEIGHTS_NAME}, nor a "
                            f"DeepSpeed checkpoint (a save dir with 'latest', a tag dir with *model_states.pt, "
                            f"or a run dir with {CHECKPOINTS_DIR}/)")


def split_tag(path: str, tag: str | None = None) -> tuple[str, str]:
    """``(save_dir, tag)`` of a DeepSpeed checkpoint given as a tag dir or a save dir (``latest``)."""
    path = os.path.abspath(path)
    if tag is not None:
        return path, tag
    if _is_tag_dir(path):
        return os.path.dirname(path), os.path.basename(path)
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return path, f.read().strip()
    raise FileNotFoundError(f"{path} is not a DeepSpeed checkpoint: expected a directory with a 'latest' file "
                            f"(engine.save_checkpoint's save_dir) or one with *model_states.pt files (a tag)")


def run_dir_of(path: str) -> str:
    """The run folder a checkpoint path belongs to (a weights file's folder, a tag's run dir)."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    if step_of(folder) is not None:
        folder = os.path.dirname(folder)
    if os.path.basename(folder) == CHECKPOINTS_DIR:
        folder = os.path.dirname(folder)
    return folder


# -- reading ----------------------------------------------------------------------------------------------

def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (see the module docstring for the formats accepted)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights {path!r} do not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path}: no tensors found")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a weights file strictly: every key of the model, nothing else."""
    state = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: weights do not match the model; missing {missing[:8]}, unexpected {unexpected[:8]}")


def _load_pickle(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Stage-0 files pickle optimizer state beyond plain tensors. This is a checkpoint a training run
        # wrote, which DeepSpeed itself loads the same way.
        return torch.load(path, map_location="cpu", weights_only=False)


def client_state(tag_dir: str) -> dict:
    """The model-states file of a tag dir: client state (step, config, classes, ...), ds_config, module."""
    files = sorted(glob.glob(os.path.join(tag_dir, "*model_states.pt")))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no *model_states.pt files")
    return _load_pickle(files[0])


def consolidate(save_dir: str, tag: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """fp32 weights of a DeepSpeed checkpoint, its model-states contents and where the weights came from:
    ``zero_to_fp32`` (the fp32 master weights in the ZeRO optimizer shards, any stage 1-3, consolidated by
    DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``) or ``module`` (stage 0: the module itself)."""
    tag_dir = os.path.join(save_dir, tag)
    states = client_state(tag_dir)
    if glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(save_dir, tag=tag), states, "zero_to_fp32"
    module = states.get("module")
    if not isinstance(module, dict):
        raise ValueError(f"{tag_dir}: no 'module' state dict and no ZeRO optimizer shards")
    low = sorted({str(v.dtype) for v in module.values() if v.is_floating_point() and v.dtype != torch.float32})
    if low:
        log.warning("%s: stage-0 weights are stored in %s; read as float32 upcasts", tag_dir, low)
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}, states, "module"


def find_config(tag_dir: str, states: dict | None = None) -> tuple[dict | None, str | None]:
    """The training config of a DeepSpeed checkpoint: its client state's, else the nearest ``config.yaml``
    (in the tag dir, the save dir or the run dir). ``(None, None)`` when there is none."""
    from mmvit.config import load_config

    states = client_state(tag_dir) if states is None else states
    if isinstance(states.get(CONFIG_KEY), dict):
        return states[CONFIG_KEY], "client_state"
    save_dir = os.path.dirname(os.path.abspath(tag_dir))
    for folder in (tag_dir, save_dir, os.path.dirname(save_dir)):
        candidate = os.path.join(folder, CONFIG_NAME)
        if os.path.isfile(candidate):
            return load_config(candidate).to_dict(), candidate
    return None, None

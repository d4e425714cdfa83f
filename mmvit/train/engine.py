"""Everything DeepSpeed-specific in one place: process group, config, engine, backward, checkpoints, export.

DeepSpeed 0.19.8 facts this relies on (see ../shared/REFERENCE.md and the installed source):
- ``engine.backward(loss)`` divides the loss by the accumulation steps and the gradient all-reduce averages
  over data-parallel ranks. Our loss is already a global mean (normalised by the count over all ranks and
  micro-batches), so :func:`backward` passes ``scale_wrt_gas=False`` and multiplies by the data-parallel size:
  the gradient the optimizer sees is exactly the gradient of the global mean.
- With ZeRO >= 1 (and with bf16/fp16 wrappers) the optimizer checks the gradient norm and skips the update
  when it is not finite (``engine.was_step_applied()`` is then False). Plain fp32 without ZeRO has no such
  check, so a non-finite loss cannot be skipped there (the loop aborts instead).
- ``gradient_clipping`` defaults to 1.0; it must be given explicitly. The rate is set by mmvit's schedule on
  ``engine.optimizer.param_groups`` every step; a DeepSpeed ``scheduler`` section is refused.
"""

from __future__ import annotations

import copy
import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(timeout_min: float = 30.0) -> tuple[int, int, int]:
    """Join (or, for ``python tools/train.py``, create) the process group; returns (rank, world_size, local_rank).

    The ``deepspeed`` launcher and torchrun set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. A plain
    ``python`` start sets none of them: it becomes a world of one on a free local port (without them,
    DeepSpeed would go looking for MPI).
    """
    import deepspeed

    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    deepspeed.init_distributed(timeout=timedelta(minutes=timeout_min), verbose=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def build_ds_config(ds: dict, train: Any) -> dict:
    """Check and complete the DeepSpeed config (a dict from the ``deepspeed:`` section or ``--deepspeed_config``).

    ``train`` is the :class:`~mmvit.train.config.TrainConfig`: it owns the rate and weight decay, which are
    filled into an ``optimizer`` section when the config has one (and must not disagree with it).
    """
    ds = copy.deepcopy(dict(ds or {}))
    if "gradient_clipping" not in ds:
        raise KeyError("deepspeed.gradient_clipping is not set: DeepSpeed 0.19.8 silently defaults it to 1.0; "
                       "set it explicitly (0 disables clipping)")
    if "scheduler" in ds:
        raise KeyError("deepspeed.scheduler: mmvit sets the learning rate itself from train.lr, train.warmup_steps "
                       "and train.schedule (warm-up + cosine); remove the DeepSpeed scheduler section")
    micro = ds.setdefault("train_micro_batch_size_per_gpu", 1)
    if micro != 1:
        raise ValueError(f"deepspeed.train_micro_batch_size_per_gpu must be 1, got {micro}: one micro-batch is one "
                         f"packed batch of data.batch_rows rows; use train_batch_size or gradient_accumulation_steps")
    if "train_batch_size" not in ds and "gradient_accumulation_steps" not in ds:
        ds["gradient_accumulation_steps"] = 1
    ds.setdefault("steps_per_print", 2 ** 31 - 1)  # mmvit logs progress itself
    if ds.get("optimizer") is None:
        ds.pop("optimizer", None)  # a client torch.optim.AdamW (see initialize)
    opt = ds.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        for key, ours in (("lr", train.lr), ("weight_decay", train.weight_decay), ("betas", list(train.betas)),
                          ("eps", train.eps)):
            theirs = params.get(key)
            if theirs is not None and (list(theirs) if key == "betas" else theirs) != ours:
                raise ValueError(f"deepspeed.optimizer.params.{key}={theirs} disagrees with train.{key}={ours}; "
                                 f"mmvit's train section owns it: remove it from the DeepSpeed config")
            params[key] = ours
    return ds


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: with weight decay, and without for ``model.no_weight_decay()`` (norms, biases,
    position embeddings, tokens)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialize(model: torch.nn.Module, ds_config: dict, train: Any):
    """The DeepSpeed engine. Without an ``optimizer`` section, a client ``torch.optim.AdamW`` (fused on CUDA)."""
    import deepspeed

    groups = param_groups(model, train.weight_decay)
    optimizer = None
    if "optimizer" not in ds_config:
        fused = torch.cuda.is_available()
        optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps, fused=fused)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                           config=ds_config)
    return engine


def compute_dtype(engine) -> torch.dtype:
    """The dtype of the engine's module: inputs are cast to it (DeepSpeed does not cast inputs)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def can_skip_nonfinite(engine) -> bool:
    """Whether DeepSpeed drops an update whose gradient norm is not finite (ZeRO >= 1, bf16 or fp16)."""
    return zero_stage(engine) >= 1 or engine.bfloat16_enabled() or engine.fp16_enabled()


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def backward(engine, loss: torch.Tensor) -> None:
    """Backward of a loss that is already a global mean: undo DeepSpeed's 1/gas and 1/dp_world_size."""
    engine.backward(loss * engine.dp_world_size, scale_wrt_gas=False)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def full_grads(engine) -> dict[str, torch.Tensor]:
    """Full gradients after the last backward of a step and before ``engine.step()`` (collective)."""
    from deepspeed.utils import safe_get_full_grad

    out = {}
    for name, p in engine.module.named_parameters():
        g = safe_get_full_grad(p)
        out[name] = None if g is None else g.detach().float().cpu().clone()
    return out


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's weights, whole, fp32, on CPU (collective under ZeRO-3, which shards parameters)."""
    module = engine.module
    if zero_stage(engine) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def universal_info_key() -> str:
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    return UNIVERSAL_CHECKPOINT_INFO


def is_universal(path: str) -> bool:
    """A folder written by ``python -m deepspeed.checkpoint.ds_to_universal`` (finished: it copies the model
    states files after the optimizer state)."""
    return (os.path.isfile(os.path.join(path, "zero", "optimizer_state.pt"))
            and any(f.startswith("mp_rank_") or "model_states" in f for f in os.listdir(path)))


def save(engine, ckpt_dir: str, tag: str, client_state: dict) -> None:
    """``engine.save_checkpoint`` on every rank, with the universal-checkpoint marker DeepSpeed's converter needs."""
    state = dict(client_state)
    state[universal_info_key()] = {}
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=state)


def load(engine, path: str) -> dict:
    """Load the checkpoint folder ``path`` (``.../checkpoints/<tag>``); returns the client state."""
    parent, tag = os.path.split(os.path.abspath(path.rstrip("/")))
    load_path, client = engine.load_checkpoint(parent, tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    return client or {}

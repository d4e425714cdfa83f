"""The trainer's only door to DeepSpeed: process group, config, the engine and its checkpoints.

``Engine`` wraps ``deepspeed.initialize``'s engine with the few operations the loop needs, so that the loop
reads as plain training code and every DeepSpeed-specific fact lives here. (Reading DeepSpeed checkpoint
files after training, e.g. ``zero_to_fp32``, is :mod:`mmvit.checkpoint`'s job.)

DeepSpeed 0.19.8 facts this relies on (checked in its source: runtime/engine.py):
- ``engine.backward(loss)`` divides the loss by the accumulation steps and the gradient all-reduce averages
  over data-parallel ranks. mmvit's loss is already a global mean (normalised by the count over all ranks
  and micro-batches), so :meth:`Engine.backward` passes ``scale_wrt_gas=False`` and multiplies by the
  data-parallel size: the gradient the optimizer sees is exactly the gradient of the global mean.
- With ZeRO >= 1 (and with bf16/fp16 wrappers) the optimizer checks the gradient norm and skips the update
  when it is not finite (``engine.was_step_applied()`` is then False). Plain fp32 without ZeRO has no such
  check: there :meth:`Engine.drop_update` makes the boundary ``step()`` skip the optimizer's own ``step``
  (DeepSpeed still clips, zeroes the gradients and counts the step, as after an overflow), so the weights
  and the optimizer state stay exactly as they were. (Clearing the gradients instead would not do:
  DeepSpeed's fp32 gradient clipping indexes the first parameter that has one.)
- ``gradient_clipping`` defaults to 1.0 when absent: it must be given explicitly. The rate is set by mmvit's
  schedule on ``engine.optimizer.param_groups`` every step; a DeepSpeed ``scheduler`` section is refused.
- ``deepspeed.add_config_arguments`` adds ``--deepspeed`` and ``--deepspeed_config``; the launcher also
  passes ``--local_rank``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import socket
from datetime import timedelta
from typing import Any

import torch

from mmvit import checkpoint as ckpt


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DeepSpeed's own flags (``--deepspeed``, ``--deepspeed_config``)."""
    import deepspeed

    return deepspeed.add_config_arguments(parser)


def start(timeout_min: float = 30.0) -> tuple[int, int, int]:
    """Join (or, for ``python tools/train.py``, create) the process group; returns (rank, world_size, local_rank).

    The ``deepspeed`` launcher and torchrun set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. A plain
    ``python`` start sets none of them: it becomes a world of one on a free local port (without them,
    DeepSpeed would go looking for MPI).
    """
    import deepspeed
    import torch.distributed as dist

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
    else:  # only DeepSpeed's CPU backend makes the shared-memory buffers (and no NCCL barrier runs here)
        release_shm_buffer()
    return dist.get_rank(), dist.get_world_size(), local_rank


SHM_DIR = "/dev/shm"
SHM_PREFIX = "deepspeed_allreduce_buffer_"


def shm_buffer_name(rank: int) -> str:
    """The file name of one rank's buffer for DeepSpeed's shared-memory all-reduce on CPU.

    When every rank is on one machine (``LOCAL_SIZE == WORLD_SIZE``, as the ``deepspeed`` launcher sets),
    DeepSpeed's CPU backend creates one POSIX shared-memory object per rank while the group starts, named
    ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`` (deepspeed 0.19.8,
    csrc/cpu/comm/shm.cpp, ``shm_initialize``; about 69 MB each), and maps its peers' objects. It never
    unlinks them, at exit or on a signal: without :func:`release_shm_buffer` every 2-rank run leaves
    ~140 MB in /dev/shm, which is RAM, until the machine reboots.
    """
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return f"{SHM_PREFIX}{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_buffer() -> None:
    """Unlink this rank's shared-memory all-reduce buffer once every rank has mapped all of them.

    A peer opens a rank's object by name, retrying while it does not exist yet, so it may only go once
    every rank has finished starting the group: hence the barrier (DeepSpeed maps the buffers inside
    ``init_distributed``). The mappings stay valid after the unlink and the memory goes back when the
    last rank exits, however it exits (a normal end, SIGTERM, SIGKILL).
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if dist.get_world_size() > 1:  # (``deepspeed --num_gpus 1`` sets LOCAL_SIZE=1: a world of one has one too)
        dist.barrier()
    try:
        os.unlink(os.path.join(SHM_DIR, shm_buffer_name(dist.get_rank())))
    except FileNotFoundError:  # not a single-machine group, or another DeepSpeed build: nothing to free
        pass


def stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def build_ds_config(ds: dict, train: Any, *, universal: bool = False, precision: str = "fp32",
                    device: torch.device | None = None) -> dict:
    """Check and complete the DeepSpeed config (the ``deepspeed:`` section or ``--deepspeed_config``).

    ``train`` is the :class:`~mmvit.train.config.TrainConfig`: it owns the rate and weight decay, which are
    filled into an ``optimizer`` section when the config has one (and must not disagree with it).
    ``universal``: the run resumes from a universal checkpoint (``checkpoint.load_universal`` is set).
    ``precision``: as :func:`mmvit.train.precision.resolve` chose it; its sections are filled in by
    :func:`mmvit.train.precision.apply` (``device``: where the run trains, CPU when not given).
    """
    from mmvit.train import precision as prec

    ds = copy.deepcopy(dict(ds or {}))
    if "gradient_clipping" not in ds:
        raise KeyError("deepspeed.gradient_clipping is not set: DeepSpeed 0.19.8 silently defaults it to 1.0; "
                       "set it explicitly (0 disables clipping)")
    if "scheduler" in ds:
        raise KeyError("deepspeed.scheduler: mmvit sets the learning rate itself from train.lr, train.warmup_steps "
                       "and train.schedule (warm-up + cosine); remove the DeepSpeed scheduler section")
    if universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    elif (ds.get("checkpoint") or {}).get("load_universal"):
        raise ValueError("deepspeed.checkpoint.load_universal is set but --resume does not name a universal "
                         "checkpoint folder (convert one with python -m deepspeed.checkpoint.ds_to_universal)")
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
    return prec.apply(ds, precision, device if device is not None else torch.device("cpu"))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: with weight decay, and without for ``model.no_weight_decay()`` (norms, biases,
    position embeddings, tokens). Frozen parameters (``requires_grad=False``) are in neither."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Engine:
    """A DeepSpeed engine seen through what the step loop does with it."""

    def __init__(self, model: torch.nn.Module, ds_config: dict, train: Any):
        import deepspeed

        groups = param_groups(model, train.weight_decay)
        optimizer = None
        if "optimizer" not in ds_config:
            fused = torch.cuda.is_available()
            optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps, fused=fused)
        self.ds, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                                config=ds_config)
        self._drop_pending = self._dropped = False
        if self.dtype != torch.float32 and self.zero_stage == 0 and self.micro_batches > 1:
            logging.getLogger("mmvit.train").warning(
                f"{self.precision} without ZeRO sums the gradients of a step's {self.micro_batches} micro-batches "
                f"in {self.precision} (DeepSpeed 0.19.8 accumulates in fp32 only with ZeRO >= 1); set "
                f"deepspeed.zero_optimization.stage=1 to sum them in fp32")

    # -- what the engine is ---------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def micro_batches(self) -> int:
        """Micro-batches per rank per optimizer step (``gradient_accumulation_steps``)."""
        return int(self.ds.gradient_accumulation_steps())

    @property
    def zero_stage(self) -> int:
        return int(self.ds.zero_optimization_stage())

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's weights: inputs are cast to it (DeepSpeed does not cast inputs)."""
        if self.ds.bfloat16_enabled():
            return torch.bfloat16
        if self.ds.fp16_enabled():
            return torch.float16
        return torch.float32

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what checkpoints record and resumes compare."""
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def fp16(self) -> bool:
        return bool(self.ds.fp16_enabled())

    @property
    def ds_skips_nonfinite(self) -> bool:
        """Whether DeepSpeed itself drops an update whose gradient norm is not finite (ZeRO >= 1, bf16, fp16)."""
        return self.zero_stage >= 1 or self.ds.bfloat16_enabled() or self.ds.fp16_enabled()

    def drop_update(self) -> None:
        """The coming boundary :meth:`step` must apply nothing (every rank calls this for the same step: the
        loop agrees on it first). With DeepSpeed's own check the poisoned (NaN) gradient already drops it;
        in fp32 without ZeRO the optimizer's ``step`` is skipped for that one call."""
        if not self.ds_skips_nonfinite:
            self._drop_pending = True

    # -- a step ---------------------------------------------------------------------------------------------
    def __call__(self, batch):
        return self.ds(batch)

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss that is already a global mean: undo DeepSpeed's 1/gas and 1/dp_world_size."""
        self.ds.backward(loss * self.ds.dp_world_size, scale_wrt_gas=False)

    def step(self) -> None:
        """Call after every micro-batch's backward; the optimizer applies at the accumulation boundary."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        if not (boundary and self._drop_pending):
            self.ds.step()
        else:
            opt = self.ds.optimizer
            opt.step = lambda *args, **kwargs: None  # an instance attribute shadows the method, this call only
            try:
                self.ds.step()
            finally:
                del opt.step
        if boundary:
            self._dropped, self._drop_pending = self._drop_pending, False

    @property
    def step_applied(self) -> bool:
        return bool(self.ds.was_step_applied()) and not self._dropped

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def full_grads(self) -> dict[str, torch.Tensor | None]:
        """Full gradients after the last backward of a step and before its ``step()`` (collective)."""
        from deepspeed.utils import safe_get_full_grad

        out = {}
        for name, p in self.module.named_parameters():
            g = safe_get_full_grad(p)
            out[name] = None if g is None else g.detach().float().cpu().clone()
        return out

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights, whole, fp32, on CPU (collective under ZeRO-3, which shards parameters)."""
        module = self.module
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}

    def frozen_state(self) -> dict[str, torch.Tensor] | None:
        """Under ZeRO-3, the frozen parameters (``requires_grad=False``: JEPA's target encoder, an unused pool)
        whole, fp32, on CPU, on rank 0 (``None`` elsewhere and at other stages). Collective: every rank calls it.

        ZeRO-3 saves sharded placeholders of every parameter in the module state, and DeepSpeed's universal
        checkpoint keeps the optimised parameters only, so a frozen submodule is in neither in a usable form;
        the client state carries it instead (:func:`mmvit.objectives.base.restore_frozen` reads it back).
        """
        if self.zero_stage != 3:
            return None
        import deepspeed
        import torch.distributed as dist

        frozen = [(n, p) for n, p in self.module.named_parameters() if not p.requires_grad]
        if not frozen:
            return None
        with deepspeed.zero.GatheredParameters([p for _, p in frozen], modifier_rank=None):
            values = {n: p.detach().float().cpu().clone() for n, p in frozen}
        return values if dist.get_rank() == 0 else None

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        """``save_checkpoint`` on every rank, with the key DeepSpeed's universal-checkpoint converter needs."""
        state = dict(client_state)
        state[ckpt.universal_info_key()] = {}
        self.ds.save_checkpoint(ckpt_dir, tag=tag, client_state=state)

    def load(self, path: str) -> dict:
        """Load the checkpoint folder ``path`` (``.../checkpoints/<tag>``); returns the client state."""
        parent, tag = os.path.split(os.path.abspath(path.rstrip("/")))
        load_path, client = self.ds.load_checkpoint(parent, tag=tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        return client or {}

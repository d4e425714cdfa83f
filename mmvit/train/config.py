"""Typed configs of the ``train:``, ``eval:`` and ``export:`` sections (docs/training.md lists every key)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from mmvit.train.faults import FaultConfig
from mmvit.typed import from_dict, num


@dataclasses.dataclass
class TrainConfig:
    """The ``train:`` section."""

    RENAMED: ClassVar[dict[str, str]] = {
        "label_smoothing": "it belongs to the objective: objective: {type: classification, label_smoothing: ...}"}

    steps: int = num(1000, ge=1)        # optimizer steps (each = gradient_accumulation_steps micro-batches per rank)
    lr: float = num(1e-3, ge=0.0)       # peak rate, reached at the end of warm-up
    warmup_steps: int = num(0, ge=0)
    warmup_init: float = num(0.0, ge=0.0, le=1.0)  # rate at step 0 as a fraction of lr
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = num(0.0, ge=0.0, le=1.0)  # cosine ends at lr * min_lr_ratio
    weight_decay: float = num(0.05, ge=0.0)  # not applied to model.no_weight_decay() (norms, biases, pos. embeddings)
    betas: tuple[float, float] = num((0.9, 0.999), ge=0.0, lt=1.0)
    eps: float = num(1e-8, gt=0.0)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # with the curriculum stage's examples per step
    loss_norm: Literal["examples", "tokens"] = "examples"   # global mean over examples, or weighted by tokens
    ema_decay: float | None = num(None, gt=0.0, lt=1.0)  # e.g. 0.9999; None: no EMA
    # fp32, or bf16/fp16 weights with fp32 masters (DeepSpeed's mixed precision); auto: bf16 where the CPU
    # or GPU has native bf16, else fp32 (mmvit/train/precision.py). None: as the deepspeed section says.
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    grad_checkpointing: bool = False
    save_every: int = num(0, ge=0)      # checkpoint every N steps (0: only at the end and on SIGTERM)
    keep_checkpoints: int = num(3, ge=0)  # complete checkpoints kept (0: all)
    max_nonfinite: int = num(3, ge=1)   # this many skipped steps in a row abort the run
    log_every: int = num(1, ge=1)       # steps between metric records
    progress: bool = True               # tqdm bar on rank 0
    dist_timeout_min: float = num(30.0, gt=0.0)  # collective timeout
    # After the first SIGTERM/SIGINT/SIGUSR1: save and exit within this bound, else exit 4 without a marker.
    # Keep it under the launcher's grace period (deepspeed and torchrun: SIGKILL 30 s after they forward).
    stop_timeout_s: float = num(60.0, gt=0.0)
    threads: int | None = num(None, ge=1)  # torch intra-op threads per rank; None: cores on the host / its ranks
    # Bit-reproducible runs: torch.use_deterministic_algorithms (and on GPUs cuBLAS/cuDNN settings).
    deterministic: bool = False
    faults: FaultConfig = dataclasses.field(default_factory=FaultConfig)


@dataclasses.dataclass
class EvalConfig:
    """The ``eval:`` section: periodic evaluation on a held-out split, through the same passes as
    tools/eval_video.py (videos scored per video after aggregating their views; images per image)."""

    every: int = num(0, ge=0)           # steps between evaluations (0: only at the end)
    split: str = "val"
    views: str = "full"                 # view sets for videos (as tools/eval_video.py --views)
    images: bool = True                 # also evaluate the split's images
    aggregate: Literal["mean_prob", "mean_logit", "max_prob"] = "mean_prob"
    batches: int | None = num(None, ge=1)  # at most this many batches per pass and rank (None: the whole split)
    at_end: bool = True
    ema: bool = True                    # also evaluate the EMA weights when there are any


@dataclasses.dataclass
class ExportConfig:
    """The ``export:`` section: final weights as safetensors with the config beside them."""

    enabled: bool = True
    ema: bool = True                    # also write model_ema.safetensors when there is an EMA


def parse(cfg: dict) -> tuple[TrainConfig, EvalConfig, ExportConfig]:
    return (from_dict(TrainConfig, cfg.get("train"), "train"), from_dict(EvalConfig, cfg.get("eval"), "eval"),
            from_dict(ExportConfig, cfg.get("export"), "export"))

"""Typed configs of the ``train:``, ``eval:`` and ``export:`` sections (docs/training.md lists every key)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mmvit.config import from_dict


def _numbers(cfg, floats=(), ints=()) -> None:
    """Accept ``1e-3`` (a string to YAML 1.1, which wants ``1.0e-3``) and ints where floats are meant."""
    section = type(cfg).__name__.replace("Config", "").lower()
    for names, kind in ((floats, float), (ints, int)):
        for name in names:
            value = getattr(cfg, name)
            if value is None or isinstance(value, bool):
                continue
            try:
                number = kind(float(value)) if kind is int else kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{section}.{name} must be a number, got {value!r}") from None
            if kind is int and number != float(value):
                raise ValueError(f"{section}.{name} must be a whole number, got {value!r}")
            setattr(cfg, name, number)


@dataclasses.dataclass
class FaultConfig:
    """Fault injection for tests of the failure paths (``train.faults``); all off by default."""

    nan_steps: list[int] = dataclasses.field(default_factory=list)  # make the loss NaN at these steps...
    nan_rank: int = 0                                                # ...on this rank only
    step_delay_s: float = 0.0           # sleep after each step (gives a signal time to arrive in tests)
    grad_dump: str | None = None        # write the full gradients of the first step to this file (rank 0)


@dataclasses.dataclass
class TrainConfig:
    """The ``train:`` section."""

    steps: int = 1000                   # optimizer steps (each = gradient_accumulation_steps micro-batches per rank)
    lr: float = 1e-3                    # peak rate, reached at the end of warm-up
    warmup_steps: int = 0
    warmup_init: float = 0.0            # rate at step 0 as a fraction of lr
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0           # cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.05          # not applied to model.no_weight_decay() (norms, biases, pos. embeddings)
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # with the curriculum stage's examples per step
    loss_norm: Literal["examples", "tokens"] = "examples"   # global mean over examples, or weighted by tokens
    label_smoothing: float = 0.0
    ema_decay: float | None = None      # e.g. 0.9999; None: no EMA
    grad_checkpointing: bool = False
    save_every: int = 0                 # checkpoint every N steps (0: only at the end and on SIGTERM)
    keep_checkpoints: int = 3           # complete checkpoints kept (0: all)
    max_nonfinite: int = 3              # this many skipped steps in a row abort the run
    log_every: int = 1                  # steps between metric records
    progress: bool = True               # tqdm bar on rank 0
    dist_timeout_min: float = 30.0      # collective timeout
    faults: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _numbers(self, floats=("lr", "warmup_init", "min_lr_ratio", "weight_decay", "eps", "label_smoothing",
                               "ema_decay", "dist_timeout_min"),
                 ints=("steps", "warmup_steps", "save_every", "keep_checkpoints", "max_nonfinite", "log_every"))
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.loss_norm not in ("examples", "tokens"):
            raise ValueError(f"train.loss_norm must be examples or tokens, got {self.loss_norm!r}")
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise ValueError(f"train.lr_scaling must be none, linear or sqrt, got {self.lr_scaling!r}")
        if self.max_nonfinite < 1:
            raise ValueError(f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        self.fault = from_dict(FaultConfig, self.faults, "train.faults")


@dataclasses.dataclass
class EvalConfig:
    """The ``eval:`` section: periodic top-1/top-5 on a held-out split."""

    every: int = 0                      # steps between evaluations (0: only at the end)
    split: str = "val"
    batches: int | None = None          # at most this many batches per rank (None: the whole split)
    at_end: bool = True
    ema: bool = True                    # also evaluate the EMA weights when there are any

    def __post_init__(self):
        _numbers(self, ints=("every", "batches"))


@dataclasses.dataclass
class ExportConfig:
    """The ``export:`` section: final weights as safetensors with the config beside them."""

    enabled: bool = True
    ema: bool = True                    # also write model_ema.safetensors when there is an EMA


def parse(cfg: dict) -> tuple[TrainConfig, EvalConfig, ExportConfig]:
    return (from_dict(TrainConfig, cfg.get("train"), "train"), from_dict(EvalConfig, cfg.get("eval"), "eval"),
            from_dict(ExportConfig, cfg.get("export"), "export"))

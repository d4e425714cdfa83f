"""Fault injection for tests of the failure paths (``train.faults``); every hook does nothing by default.

The loop calls the hooks at fixed points of a step, so a test can make a loss non-finite on one rank, slow
steps down (for a signal to arrive mid-run), or dump the full gradient of the first step, without branches
in the step itself.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from mmvit.typed import num


@dataclasses.dataclass
class FaultConfig:
    nan_steps: list[int] = dataclasses.field(default_factory=list)  # make the loss NaN at these steps...
    nan_rank: int = num(0, ge=0)                                     # ...on this rank only
    step_delay_s: float = num(0.0, ge=0.0)  # sleep after each step (gives a signal time to arrive in tests)
    grad_dump: str | None = None        # write the full gradients of the first step to this file (rank 0)


class Faults:
    def __init__(self, cfg: FaultConfig, rank: int):
        self.cfg, self.rank = cfg, rank

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The micro-batch loss, NaN on ``nan_rank`` at ``nan_steps``."""
        if step in self.cfg.nan_steps and self.rank == self.cfg.nan_rank:
            return loss * float("nan")
        return loss

    def before_update(self, engine, step: int, global_count: float) -> None:
        """After the last backward of a step, before the optimizer applies it (collective when dumping)."""
        if self.cfg.grad_dump and step == 0:
            grads = engine.full_grads()
            if self.rank == 0:
                torch.save({"grads": grads, "global_count": global_count}, self.cfg.grad_dump)

    def after_step(self) -> None:
        if self.cfg.step_delay_s:
            time.sleep(self.cfg.step_delay_s)

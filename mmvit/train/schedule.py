"""Learning rate: linear warm-up, then cosine decay (Loshchilov & Hutter, SGDR), as pure functions of the step.

The rate is set on the optimizer before every step from the global step, so it does not depend on how many
steps were skipped or on where a run was resumed. With a curriculum, ``lr_scaling`` multiplies it by the
stage's examples per step relative to the full shape (``1 / cost``): ``linear`` follows PySlowFast's
multigrid, which scales the rate with its batch-size factor; ``sqrt`` is the gentler square-root rule.
"""

from __future__ import annotations

import math
from typing import Literal


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, schedule: Literal["cosine", "constant"] = "cosine",
              min_lr_ratio: float = 0.0, warmup_init: float = 0.0) -> float:
    """Multiplier of the peak rate at ``step`` (0-based): linear warm-up, then decay (``schedule`` comes from
    the typed ``train.schedule``).

    Warm-up rises from ``warmup_init`` (at step -1, so even step 0 learns) to 1 at step ``warmup_steps - 1``;
    cosine then falls from 1 at step ``warmup_steps`` to ``min_lr_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_init + (1.0 - warmup_init) * (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stage_lr_scale(cost: float, rule: Literal["none", "linear", "sqrt"] = "none") -> float:
    """Rate multiplier for a curriculum stage of relative cost ``cost`` (examples per step grow as 1/cost).
    ``rule`` comes from the typed ``train.lr_scaling``."""
    if rule == "none":
        return 1.0
    if cost <= 0:
        raise ValueError(f"stage cost must be positive, got {cost}")
    return 1.0 / cost if rule == "linear" else 1.0 / math.sqrt(cost)

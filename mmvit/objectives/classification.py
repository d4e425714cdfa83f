"""``classification``: cross-entropy of each example's logits against its label, within its own task.

With several label spaces (one head per task, Omnivore, Girdhar et al. 2022), an example's loss is the
cross-entropy over its task's classes only (label smoothing spreads over those classes only), times its
task's weight (``tasks.<task>.weight``); the trainer then averages over all examples of the step, all tasks
together.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.objectives.base import Objective, ObjectiveOutput
from mmvit.packing import PackedBatch
from mmvit.registry import OBJECTIVES


def example_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``[E]`` cross-entropy per example, computed in fp32 whatever the model's dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)


@OBJECTIVES.register("classification")
class Classification(Objective):
    """Supervised classification; ``label_smoothing`` as in Szegedy et al. 2016."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0,
                 task_weights: Mapping[str, float] | None = None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"objective.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.model = model
        self.label_smoothing = label_smoothing
        classes = getattr(model, "task_classes", {}) or {}
        unknown = sorted(set(task_weights or {}) - set(classes))
        if unknown:
            raise KeyError(f"task weights for {unknown}, which the model has no head for ({sorted(classes)})")
        self.classes = list(classes.values())
        self.register_buffer("weights", torch.tensor([float((task_weights or {}).get(t, 1.0)) for t in classes]),
                             persistent=False)

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        if batch.labels is None:
            raise ValueError("the classification objective needs labels in every batch")
        logits = self.model(batch)
        if len(self.classes) <= 1:
            losses = example_losses(logits, batch.labels, self.label_smoothing)
            if len(self.classes) == 1:
                losses = losses * self.weights[0]
        else:
            tasks = batch.tasks if batch.tasks is not None else torch.zeros_like(batch.labels)
            losses = logits.new_zeros(len(logits), dtype=torch.float32)
            for t, k in enumerate(self.classes):
                rows = torch.nonzero(tasks == t).flatten()
                if len(rows):
                    loss = example_losses(logits[rows, :k], batch.labels[rows], self.label_smoothing)
                    losses = losses.index_put((rows,), loss * self.weights[t])
        correct = (logits.detach().argmax(-1) == batch.labels).sum()
        return ObjectiveOutput(losses=losses, sums={"top1": correct})

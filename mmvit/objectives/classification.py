"""``classification``: cross-entropy of each example's logits against its label."""

from __future__ import annotations

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

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"objective.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        if batch.labels is None:
            raise ValueError("the classification objective needs labels in every batch")
        logits = self.model(batch)
        losses = example_losses(logits, batch.labels, self.label_smoothing)
        correct = (logits.detach().argmax(-1) == batch.labels).sum()
        return ObjectiveOutput(losses=losses, sums={"top1": correct})

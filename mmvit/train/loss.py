"""The training loss of packed batches: a global mean, not a mean of per-micro-batch means.

A pack holds a variable number of examples, so averaging each micro-batch and then averaging those means
would weight an example in a sparse pack more than one in a dense pack. Instead the per-example losses of a
step are summed over all micro-batches and ranks and divided by the global count (examples, or tokens with
``loss_norm: tokens``, where each example weighs as many tokens as it has). The count is all-reduced before
the first backward, so every micro-batch's loss is already divided by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from mmvit.packing import PackedBatch


def example_weights(batch: PackedBatch, mode: Literal["examples", "tokens"]) -> torch.Tensor:
    """``[E]`` weight of each example in batch order: 1, or its number of tokens."""
    if mode == "examples":
        return torch.ones(batch.num_examples)
    if mode == "tokens":
        return batch.lengths.float()
    raise ValueError(f"loss_norm must be examples or tokens, got {mode!r}")


def local_count(batches: Sequence[PackedBatch], mode: Literal["examples", "tokens"]) -> float:
    """The denominator's share of this rank: weights summed over its micro-batches of the step."""
    return float(sum(float(example_weights(b, mode).sum()) for b in batches))


def example_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``[E]`` cross-entropy per example, computed in fp32 whatever the model's dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)


def normalised_loss(losses: torch.Tensor, weights: torch.Tensor, global_count: float) -> torch.Tensor:
    """This micro-batch's share of the global mean: ``sum(w * loss) / global_count``."""
    return (losses * weights.to(losses.device)).sum() / global_count

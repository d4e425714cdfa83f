"""The training loss of packed batches: a global mean, not a mean of per-micro-batch means.

A pack holds a variable number of examples, so averaging each micro-batch and then averaging those means
would weight an example in a sparse pack more than one in a dense pack. Instead the per-example losses of a
step (from the objective) are summed over all micro-batches and ranks and divided by the global count
(examples, or tokens with ``loss_norm: tokens``, where each example weighs as many tokens as it has, or as
its objective says: masked tokens for masked autoencoding). The count is all-reduced before the first
backward, so every micro-batch's loss is already divided by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from mmvit.packing import PackedBatch


def example_weights(batch: PackedBatch, mode: Literal["examples", "tokens"], objective=None) -> torch.Tensor:
    """``[E]`` weight of each example in batch order: 1, or its tokens (as the objective counts them:
    ``objective.token_weights(batch)``; the example's tokens in the batch without one)."""
    if mode == "examples":
        return torch.ones(batch.num_examples)
    tokens = batch.lengths if objective is None else objective.token_weights(batch)
    return tokens.float().cpu()


def local_count(weights: Sequence[torch.Tensor]) -> float:
    """The denominator's share of this rank: weights summed over its micro-batches of the step."""
    return float(sum(float(w.sum()) for w in weights))


def normalised_loss(losses: torch.Tensor, weights: torch.Tensor, global_count: float) -> torch.Tensor:
    """This micro-batch's share of the global mean: ``sum(w * loss) / global_count``."""
    return (losses * weights.to(losses.device)).sum() / global_count

"""Frozen-feature evaluation of pretrained encoders: attentive probe, linear probe, k-nearest neighbours.

- :class:`AttentiveProbe` (V-JEPA, Bardes et al. 2024, its attentive classifier): one learned query
  cross-attends over an example's patch tokens (pre-norm cross-attention with a residual on the query, then an
  MLP), then a linear classifier. Packed: the softmax runs per example (segment softmax, as mmvit's MAP pooling
  does), so examples never mix. ``depth > 1`` puts ``depth - 1`` pre-norm self-attention blocks in front of the
  pooling, each attending within its example only (V-JEPA 2, Assran et al. 2025, probes with 4 blocks in all:
  ``num_probe_blocks: 4`` in its evaluation configs).
- :class:`LinearProbe` (MAE, He et al. 2022, linear probing): a BatchNorm without affine parameters on pooled
  features, then a linear classifier.
- :func:`knn_predict` (Wu et al. 2018, as DINO and DINOv2 evaluate): cosine similarity to the training features,
  the ``k = 20`` nearest vote for their class with weight ``exp(sim / 0.07)``. Class-balanced subsets of the
  training set are the caller's choice.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.models.attention import Attention
from mmvit.models.layout import build_layout
from mmvit.models.mlp import Mlp
from mmvit.models.pooling import segment_mean, segment_softmax
from mmvit.packing import PackedBatch


def _flat_tokens(tokens: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L, D]`` batch-layout tokens -> real tokens ``[N, D]`` and their example index ``[N]``."""
    if tuple(tokens.shape[:2]) != tuple(batch.segment_ids.shape):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the batch {tuple(batch.shape)}")
    seg = batch.segment_ids.reshape(-1)
    real = torch.nonzero(seg, as_tuple=True)[0]
    return tokens.reshape(-1, tokens.shape[-1])[real], seg[real] - 1


def mean_features(tokens: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """``[E, D]`` mean of each example's tokens (``tokens`` as ``NaViT.forward_tokens`` returns them)."""
    x, example = _flat_tokens(tokens, batch)
    return segment_mean(x, example, batch.num_examples)


class ProbeBlock(nn.Module):
    """A pre-norm transformer block over packed tokens ``[N, D]`` whose attention stays within each example."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, bias: bool = True, eps: float = 1e-6,
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=eps, **fk)
        # The exact per-example backend: probes run on CPUs as often as not, and it needs no mask.
        self.attn = Attention(dim, heads, qk_norm=False, bias=bias, eps=eps, backend="segments", **fk)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **fk)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=bias, **fk)

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), layout)
        return x + self.mlp(self.norm2(x))


class AttentiveProbe(nn.Module):
    """``forward(tokens [B, L, D], batch) -> logits [E, num_classes]`` in ``batch.example_ids`` order."""

    def __init__(self, dim: int, num_classes: int, heads: int = 8, mlp_ratio: float = 4.0, bias: bool = True,
                 eps: float = 1e-6, depth: int = 1, device=None, dtype=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"probe width {dim} is not divisible by heads {heads}")
        if depth < 1:
            raise ValueError(f"probe depth must be at least 1 (the pooling block), got {depth}")
        fk = {"device": device, "dtype": dtype}
        self.blocks = nn.ModuleList(ProbeBlock(dim, heads, mlp_ratio, bias, eps, **fk) for _ in range(depth - 1))
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Parameter(torch.empty(dim, **fk))
        self.norm1 = nn.LayerNorm(dim, eps=eps, **fk)
        self.q = nn.Linear(dim, dim, bias=bias, **fk)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias, **fk)
        self.proj = nn.Linear(dim, dim, bias=True, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **fk)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=True, **fk)
        self.head = nn.Linear(dim, num_classes, bias=True, **fk)
        nn.init.trunc_normal_(self.query, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        """The self-attention blocks: ``x [N, D]`` with ``example [N]`` (ascending) -> ``[N, D]``, same order."""
        if not len(self.blocks):
            return x
        # A one-row layout of the packed tokens: the blocks run in its (length-grouped) order, then back.
        layout = build_layout((example + 1)[None, :])
        h = torch.empty_like(x).index_copy_(0, layout.token_pos, x)
        for block in self.blocks:
            h = block(h, layout)
        return h[layout.token_pos]

    def pool(self, x: torch.Tensor, example: torch.Tensor, num_examples: int) -> torch.Tensor:
        """``x [N, D]`` tokens of ``num_examples`` examples (``example [N]``, ascending) -> ``[E, D]``."""
        x = self.encode(x, example)
        n = x.shape[0]
        q = self.q(self.query).view(self.heads, self.head_dim)                  # [H, d]
        k, v = self.kv(self.norm1(x)).view(n, 2, self.heads, self.head_dim).unbind(1)   # [N, H, d]
        w = segment_softmax((k * q).sum(-1) / math.sqrt(self.head_dim), example, num_examples)  # [N, H]
        pooled = torch.zeros(num_examples, self.heads, self.head_dim, dtype=v.dtype, device=v.device)
        pooled = pooled.index_add_(0, example, w[..., None] * v)                 # [E, H, d]
        out = self.query + self.proj(pooled.reshape(num_examples, -1))          # residual on the query
        return out + self.mlp(self.norm2(out))

    def forward(self, tokens: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        x, example = _flat_tokens(tokens, batch)
        return self.head(self.pool(x, example, batch.num_examples))


class LinearProbe(nn.Module):
    """``forward(features [E, D]) -> logits [E, num_classes]``; ``norm="batchnorm"`` is MAE's
    ``BatchNorm1d(affine=False, eps=1e-6)`` (it couples the examples of a batch in training, as in MAE)."""

    def __init__(self, dim: int, num_classes: int, norm: Literal["batchnorm", "none"] = "batchnorm",
                 device=None, dtype=None):
        super().__init__()
        if norm not in ("batchnorm", "none"):
            raise ValueError(f"linear probe norm must be batchnorm or none, got {norm!r}")
        fk = {"device": device, "dtype": dtype}
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6, **fk) if norm == "batchnorm" else nn.Identity()
        self.head = nn.Linear(dim, num_classes, **fk)
        nn.init.trunc_normal_(self.head.weight, std=0.01)  # MAE's linear-probe head init
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features))


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Class scores ``[N_test, num_classes]`` of a weighted k-NN vote (argmax is the prediction).

    Args:
        train_features: ``[N_train, D]``; train_labels: ``[N_train]`` in ``[0, num_classes)``.
        test_features: ``[N_test, D]``; both are L2-normalised here (cosine similarity).
        k: neighbours per test example; temperature: votes weigh ``exp(similarity / temperature)``.
        chunk_size: test examples per similarity block (bounds memory to ``chunk_size x N_train``).
    """
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {tuple(train_features.shape)} and "
                         f"{tuple(test_features.shape)}")
    if len(train_labels) != len(train_features):
        raise ValueError(f"{len(train_labels)} labels for {len(train_features)} training features")
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k={k} needs 1 <= k <= {len(train_features)} (the training examples)")
    labels = train_labels.long().to(train_features.device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"training labels must lie in [0, {num_classes})")
    train = F.normalize(train_features.float(), dim=1)
    out = []
    for test in F.normalize(test_features.float(), dim=1).split(chunk_size):
        sim, idx = (test @ train.T).topk(k, dim=1)                             # [n, k]
        votes = torch.zeros(len(test), num_classes, device=test.device)
        out.append(votes.scatter_add_(1, labels[idx], (sim / temperature).exp()))
    return torch.cat(out) if out else torch.zeros(0, num_classes)

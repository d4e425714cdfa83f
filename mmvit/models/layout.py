"""The trunk's token layout: a PackedBatch's real tokens as one flat sequence, grouped by length.

The trunk never computes on padding. ``SeqLayout`` is built once per forward from ``segment_ids`` and
reused by every block:

- Patch tokens are gathered out of the ``[B*L]`` batch into a flat ``[N]`` sequence; each example may get
  ``prefix`` extra tokens (class tokens) in front of its patches.
- Examples are ordered by total length (stable), so examples of equal length sit next to each other and
  the ``segments`` attention backend runs one batched call per distinct length on contiguous views.
- Per-token tensors (``token_example``) let pooling and drop-path work with scatter ops, no Python loops.
"""

from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass
class SeqLayout:
    num_examples: int
    prefix: int
    real_index: torch.Tensor      # [Np] positions of real tokens in the flattened [B*L] batch
    token_pos: torch.Tensor       # [Np] where each of those tokens sits in the trunk sequence
    prefix_pos: torch.Tensor      # [E, prefix] trunk positions of each example's prefix tokens
    token_example: torch.Tensor   # [N] example index of every trunk token
    patch_example: torch.Tensor   # [Np] example index of every real patch token (batch order)
    seqlens: list[int]            # per example in trunk order (xformers' BlockDiagonalMask order)
    groups: list[tuple[int, int, int]]  # (start, n_examples, length): contiguous same-length runs
    batch_shape: tuple[int, int]  # (B, L)

    @property
    def num_tokens(self) -> int:
        return int(self.token_example.numel())

    @functools.cached_property
    def group_sizes(self) -> list[int]:
        """Tokens of each group in ``groups`` (split sizes of the trunk sequence)."""
        return [n * length for _, n, length in self.groups]

    @functools.cached_property
    def dense_mask(self) -> torch.Tensor:
        """``[N, N]`` boolean, True where attention is allowed (same example)."""
        e = self.token_example
        return e[:, None] == e[None, :]

    @functools.cached_property
    def xformers_bias(self):
        from mmvit.models.xformers_ops import block_diagonal_mask

        return block_diagonal_mask(self.seqlens)


def build_layout(segment_ids: torch.Tensor, prefix: int = 0) -> SeqLayout:
    """Build the flat layout of a batch. ``segment_ids``: ``[B, L]``, example ``e`` has id ``e + 1``."""
    seg = segment_ids.reshape(-1)
    real = torch.nonzero(seg, as_tuple=True)[0]
    patch_example = seg[real] - 1                                        # [Np], ascending
    n_ex = int(patch_example.max()) + 1 if real.numel() else 0
    n_patch = torch.bincount(patch_example, minlength=n_ex)              # [E]
    total = n_patch + prefix                                             # [E]

    order = torch.sort(total, stable=True).indices                       # trunk order of examples
    sorted_total = total[order]
    start_sorted = torch.cumsum(sorted_total, 0) - sorted_total
    start = torch.empty_like(start_sorted)
    start[order] = start_sorted                                          # [E] trunk start of each example

    patch_start_in_batch = torch.cumsum(n_patch, 0) - n_patch            # [E] offset in the real-token list
    rank = torch.arange(real.numel(), device=seg.device) - patch_start_in_batch[patch_example]
    token_pos = start[patch_example] + prefix + rank
    prefix_pos = start[:, None] + torch.arange(prefix, device=seg.device)[None, :]

    n_tok = int(total.sum())
    token_example = torch.repeat_interleave(order, sorted_total, output_size=n_tok)

    lens = sorted_total.tolist()
    groups: list[tuple[int, int, int]] = []
    pos = 0
    for length in lens:
        if groups and groups[-1][2] == length:
            s, n, _ = groups[-1]
            groups[-1] = (s, n + 1, length)
        else:
            groups.append((pos, 1, length))
        pos += length
    return SeqLayout(
        num_examples=n_ex, prefix=prefix, real_index=real, token_pos=token_pos, prefix_pos=prefix_pos,
        token_example=token_example, patch_example=patch_example, seqlens=lens, groups=groups,
        batch_shape=tuple(segment_ids.shape))

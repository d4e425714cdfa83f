"""Packing for masked pretraining: the encoder sees each example's visible tokens, the decoder all of them.

MAE (He et al. 2022) runs its encoder on the visible patches only and its decoder on the full grid (encoded
visible tokens plus mask tokens); I-JEPA and V-JEPA (Assran et al. 2023; Bardes et al. 2024) do the same with
their context encoder and predictor, and run the target encoder on the full grid. Packed, these are two
batches over the same examples:

- the parent (encoder) batch: each example's visible tokens, packed into ``seq_len`` rows;
- ``parent.full`` (decoder / target batch): all tokens of every example, packed into ``full_seq_len`` rows of
  their own; its ``patches`` are the pixels of every token (MAE's targets), ``full.visible_index`` points each
  of its slots at the same token's slot in the parent batch (-1 where masked or padding) and
  ``full.parent_index`` maps its examples to the parent's.

Both are ordinary :class:`~mmvit.packing.PackedBatch` es built by :func:`mmvit.pack`, so every trunk, attention
backend and position embedding works on either.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from mmvit.packing import PackedBatch, as_patch_size, as_video, pack
from mmvit.pretrain.masking import MaskConfig, plan_mask


def sample_grid(sample: torch.Tensor, patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """Patches per axis ``(nt, nh, nw)`` of a ``C x H x W`` image or ``C x T x H x W`` video, as ``pack`` cuts it."""
    pt, ph, pw = as_patch_size(patch_size)
    x = as_video(sample, pt)
    return (x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw)


def plan_masks(samples: Sequence[torch.Tensor], patch_size: int | Sequence[int], cfg: MaskConfig,
               rngs: Sequence[np.random.Generator] | np.random.Generator) -> list[torch.Tensor]:
    """Visible tokens of every sample: images (3-D) by ``cfg.image``, videos (4-D) by ``cfg.video``.

    ``rngs``: one generator per sample (reproducible per example, see ``mask_rng``) or one shared generator
    drawn in sample order.
    """
    if isinstance(rngs, np.random.Generator):
        rngs = [rngs] * len(samples)
    if len(rngs) != len(samples):
        raise ValueError(f"{len(rngs)} generators for {len(samples)} samples")
    return [plan_mask(sample_grid(s, patch_size), "video" if s.dim() == 4 else "image", cfg, g)
            for s, g in zip(samples, rngs)]


def visible_index(parent: PackedBatch, full: PackedBatch, parent_index: torch.Tensor) -> torch.Tensor:
    """``[B_f, L_f]``: for each slot of ``full``, the flat ``[B*L]`` slot of the same token in ``parent``, or -1.

    Tokens are matched by (example, patch index): a table with one entry per token of every example (offset
    by example) is filled with the parent's slots and read at the full batch's tokens. No per-token loop.
    """
    grid = parent.grid.long()                                   # [E, 3] in parent order
    sizes = grid.prod(1)                                        # [E] tokens per example (full grid)
    offset = torch.cumsum(sizes, 0) - sizes                     # [E] start of each example in the table

    def token_key(batch: PackedBatch, example_of_segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg = batch.segment_ids.reshape(-1)
        slots = torch.nonzero(seg, as_tuple=True)[0]            # [N] real slots
        ex = example_of_segment[seg[slots] - 1]                 # [N] parent example index
        c = batch.coords.reshape(-1, 3)[slots].long()           # [N, 3]
        g = grid[ex]
        patch = (c[:, 0] * g[:, 1] + c[:, 1]) * g[:, 2] + c[:, 2]
        return slots, offset[ex] + patch

    p_slots, p_key = token_key(parent, torch.arange(parent.num_examples))
    f_slots, f_key = token_key(full, parent_index)
    table = torch.full((int(sizes.sum()),), -1, dtype=torch.long)
    table[p_key] = p_slots
    out = torch.full((full.segment_ids.numel(),), -1, dtype=torch.long)
    out[f_slots] = table[f_key]
    return out.view(full.segment_ids.shape)


def pack_masked(
    samples: Sequence[torch.Tensor],
    visible: Sequence[torch.Tensor],
    *,
    patch_size: int | Sequence[int],
    seq_len: int,
    full_seq_len: int,
    num_rows: int | None = None,
    full_rows: int | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    tasks: Sequence[int] | torch.Tensor | None = None,
    meta: Sequence[dict] | None = None,
    max_per_row: int | None = None,
) -> PackedBatch:
    """Pack the visible tokens of each sample (encoder batch) and all its tokens (``.full``, decoder batch).

    Args:
        samples: ``C x H x W`` images and/or ``C x T x H x W`` videos.
        visible: per sample, the sorted visible token indices (``mmvit.pretrain.masking``); at least one
            token of each example must be masked and one visible.
        patch_size, max_per_row: as in :func:`mmvit.pack`, for both packings.
        seq_len, num_rows: rows of the encoder batch.
        full_seq_len, full_rows: rows of the full batch.
        labels, tasks, meta: per sample, carried by both batches (each in its own example order).

    Raises:
        ValueError: a mask is not a proper subset, or an example does not fit (see :func:`mmvit.pack`).
    """
    if len(visible) != len(samples):
        raise ValueError(f"{len(visible)} masks for {len(samples)} samples")
    for i, (s, v) in enumerate(zip(samples, visible)):
        nt, nh, nw = sample_grid(s, patch_size)
        if v is None or not 0 < len(v) < nt * nh * nw:
            raise ValueError(f"sample {i}: a mask needs at least one visible and one masked token out of "
                             f"{nt * nh * nw}, got {None if v is None else len(v)} visible")
    # The pixels are cut once, into the full batch; the encoder batch is laid out without pixels and then
    # gathers its visible tokens from there (a copy of the visible pixels only, however high the mask ratio).
    parent = pack(samples, patch_size=patch_size, seq_len=seq_len, num_rows=num_rows, labels=labels, tasks=tasks,
                  meta=meta, max_per_row=max_per_row, keep=list(visible), pixels=False)
    full = pack(samples, patch_size=patch_size, seq_len=full_seq_len, num_rows=full_rows, labels=labels, tasks=tasks,
                meta=meta, max_per_row=max_per_row)
    rank = torch.empty_like(parent.example_ids)
    rank[parent.example_ids] = torch.arange(parent.num_examples)    # input index -> parent example index
    parent_index = rank[full.example_ids]
    vis_index = visible_index(parent, full, parent_index)           # [B_f, L_f] parent slot or -1
    full = dataclasses.replace(full, parent_index=parent_index, visible_index=vis_index)
    return dataclasses.replace(parent, patches=gather_visible(full, parent.segment_ids.shape), full=full)


def gather_visible(full: PackedBatch, shape: tuple[int, int]) -> torch.Tensor:
    """``[B, L, P]`` patches of the encoder batch of ``shape`` from ``full``: each visible token's pixels
    copied from its slot in ``full.patches`` to its slot ``full.visible_index`` says, zeros at padding."""
    src = full.patches.reshape(-1, full.patches.shape[-1])                       # [B_f*L_f, P]
    vi = full.visible_index.reshape(-1)                                          # [B_f*L_f]
    f_slots = torch.nonzero(vi >= 0, as_tuple=True)[0]                           # [N_vis] full slots
    # For every encoder slot the full slot to read (padding reads slot 0 and is zeroed after): one
    # index_select writes each output row once, where zeros + index_put would write the visible rows twice.
    source = torch.zeros(shape[0] * shape[1], dtype=torch.long, device=vi.device)  # [B*L]
    source[vi[f_slots]] = f_slots
    padding = torch.ones(shape[0] * shape[1], dtype=torch.bool, device=vi.device)
    padding[vi[f_slots]] = False
    out = src.index_select(0, source)                                            # [B*L, P]
    out.index_fill_(0, torch.nonzero(padding, as_tuple=True)[0], 0)
    return out.view(*shape, src.shape[-1])


def masked_fraction(batch: PackedBatch) -> torch.Tensor:
    """``[E]`` fraction of each example's tokens that are masked (parent example order)."""
    n = batch.grid.long().prod(1).to(torch.float32)
    return 1.0 - batch.lengths.to(torch.float32) / n

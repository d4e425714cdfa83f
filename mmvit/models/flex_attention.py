"""The ``flex`` attention backend: PyTorch's FlexAttention (``torch.nn.attention.flex_attention``; Dong, Feng,
Guessous, Liang, He, "Flex Attention: A Programming Model for Generating Optimized Attention Kernels", 2024)
with a document mask over the packed sequence.

The packed trunk sequence (``[N, H, d]``, layout.py) holds examples one after the other, so the mask is
block-diagonal: token ``i`` attends to token ``j`` iff both belong to the same example (the "document masking"
pattern of the FlexAttention paper). FlexAttention works on tiles of ``BLOCK x BLOCK`` tokens and skips
tiles that are fully masked; it needs a ``BlockMask`` listing, per query tile, the key tiles that are partly
or fully visible.

``torch.nn.attention.flex_attention.create_block_mask`` would evaluate the mask on all ``N x N`` pairs
(``create_mask`` then a reduction per tile; torch 2.13 source) unless it is itself compiled. Examples are
contiguous runs, so the tiles follow from each tile's first and last example alone: ``document_block_mask``
builds the same ``BlockMask`` (tests/test_attention.py compares the two) from ``[N/BLOCK, N/BLOCK]`` block
indices, once per forward, and ``attend`` reuses it in every block (cached on the ``SeqLayout``).

Speed needs ``torch.compile``: called eagerly, flex_attention runs an unfused reference that materializes
the full score matrix (torch warns so). ``attend`` compiles it once per process, as the FlexAttention blog and
attention-gym do. The packed length ``N`` changes from batch to batch, and FlexAttention with a BlockMask
under dynamic shapes has a history of recompiling per length or failing to compile (pytorch/pytorch issues
134560, 136196, 141486; on CPU, torch 2.13's C++ FlexAttention template fails to compile with a symbolic
length, measured here). So the sequence is padded to a multiple of ``PAD`` tokens and compiled with static
shapes: one compilation per padded length, and a training run's batches of ``B x L`` slots (``B * L`` a
multiple of ``PAD``) all have the same one when there are no class tokens. Every padding token is its own
example (it attends to itself only), so padding adds one ``BLOCK x BLOCK`` tile per padded tile, never a
row without a visible key, and nothing real ever sees it.

On CPU, torch 2.13 has no FlexAttention backward ("FlexAttention does not support backward on CPU"), and the
compiled forward, exact, was slower than ``segments`` (``python -m mmvit.bench.gpu flex-cpu``; docs/benchmarks.md,
GPU section): the backend refuses the CPU with ``CPU_REFUSAL``, and ``auto`` never picks it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mmvit.models.layout import SeqLayout

BLOCK = 128  # FlexAttention's default tile (torch.nn.attention.flex_attention._DEFAULT_SPARSE_BLOCK_SIZE)
PAD = 8 * BLOCK  # the sequence is padded to a multiple of this: few distinct lengths, hence few compilations

# Why ``attention='flex'`` is refused on CPU (measurements: docs/benchmarks.md, GPU section).
CPU_REFUSAL = (
    "attention='flex' needs CUDA: on CPU, torch's FlexAttention has no backward (torch 2.13: 'FlexAttention "
    "does not support backward on CPU'), and for inference its compiled forward, exact against the dense "
    "reference, ran at 0.24x the speed of 'segments' (one thread; docs/benchmarks.md, GPU section); use "
    "attention='segments' on CPU")

_ATTR = "_mmvit_flex_block_mask"  # where a layout keeps its BlockMask (one per layout, i.e. per forward)


def available() -> str | None:
    """None when FlexAttention imports (torch >= 2.5), else the reason."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch 2.13 has it
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention ({e})"
    return None


def padded_length(n: int, multiple: int = PAD) -> int:
    return -(-n // multiple) * multiple


def document_ids(seqlens: list[int], device: torch.device | str, pad_to: int | None = None) -> torch.Tensor:
    """``[pad_to or N]`` int32, nondecreasing: each token's example in trunk order (``0 .. E-1``), then one new
    id per padding token (``E, E+1, ...``), so that a padding token attends to itself only."""
    n = sum(seqlens)
    total = n if pad_to is None else pad_to
    if total < n:
        raise ValueError(f"pad_to={pad_to} is shorter than the sequence ({n} tokens)")
    e = len(seqlens)
    lens = torch.tensor(seqlens, device=device)
    ids = torch.repeat_interleave(torch.arange(e, device=device, dtype=torch.int32), lens, output_size=n)
    pad = torch.arange(e, e + total - n, device=device, dtype=torch.int32)
    return torch.cat([ids, pad])


def document_block_mask(seqlens: list[int], device: torch.device | str, pad_to: int | None = None,
                        block: int = BLOCK):
    """The FlexAttention ``BlockMask`` of the block-diagonal document mask over ``pad_to`` (default ``N``) tokens.

    Tile ``(i, j)`` (``block x block`` tokens) holds visible pairs iff the examples spanned by query tile ``i``
    and by key tile ``j`` overlap (ids are nondecreasing, so a tile spans the interval from its first to its
    last token's id). It is fully visible iff both tiles lie inside one and the same example and neither runs
    past the sequence end; FlexAttention then skips the mask function on it.
    """
    from torch.nn.attention.flex_attention import BlockMask

    doc = document_ids(seqlens, device, pad_to)                             # [P]
    n = doc.numel()
    if n == 0:
        raise ValueError("document_block_mask: the sequence is empty")
    nb = -(-n // block)
    starts = torch.arange(nb, device=device) * block
    ends = torch.clamp(starts + block, max=n) - 1                           # last token of each tile
    lo, hi = doc[starts], doc[ends]                                         # [nb] first / last id
    visible = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])   # [nb, nb] some pair visible
    single = (lo == hi) & (starts + block <= n)                             # one id, tile not cut at the end
    full = single[:, None] & single[None, :] & (lo[:, None] == lo[None, :])
    partial = visible & ~full

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [1, 1, nb] tile counts and [1, 1, nb, nb] key-tile indices, the listed ones first in ascending order
        dense = dense.to(torch.int32)[None, None]
        idx = torch.argsort(dense, dim=-1, descending=True, stable=True)
        return dense.sum(-1).to(torch.int32), idx.to(torch.int32)

    # The mask function reads ids past n when a kernel evaluates a tile cut at the end: pad the lookup table.
    lookup = torch.cat([doc, doc.new_full((nb * block - n,), -1)])

    def mask_mod(b, h, q_idx, kv_idx):
        return lookup[q_idx] == lookup[kv_idx]

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(n, n))


def layout_block_mask(layout: SeqLayout, device: torch.device):
    """The layout's ``BlockMask`` over ``padded_length(N)`` tokens, built on first use and kept on the layout.

    SeqLayout caches its other per-forward masks (``dense_mask``, ``xformers_bias``) as cached properties; this
    one is kept with the rest of FlexAttention, in the layout's instance dict, so it dies with the layout.
    """
    cached = layout.__dict__.get(_ATTR)
    if cached is None or cached.kv_num_blocks.device != torch.device(device):
        cached = document_block_mask(layout.seqlens, device, pad_to=padded_length(layout.num_tokens))
        layout.__dict__[_ATTR] = cached
    return cached


@functools.lru_cache(maxsize=1)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    # Static shapes (see the module docstring): one compilation per padded length.
    return torch.compile(flex_attention, dynamic=False)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, *, compiled: bool = True) -> torch.Tensor:
    """FlexAttention over the flat sequence, ``[N, H, d]`` -> ``[N, H, d]``, padded with zeros to the
    ``block_mask``'s length (no device policy: ``attend`` has it)."""
    from torch.nn.attention.flex_attention import flex_attention

    n, p = q.shape[0], block_mask.seq_lengths[0]
    fn = _compiled() if compiled else flex_attention
    qs, ks, vs = (F.pad(t, (0, 0, 0, 0, 0, p - n)).transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, P, d]
    return fn(qs, ks, vs, block_mask=block_mask)[0].transpose(0, 1)[:n]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
    """The ``flex`` backend: ``[N, H, d]`` -> ``[N, H, d]``, CUDA only (see ``CPU_REFUSAL``)."""
    why = available() or (None if q.is_cuda else CPU_REFUSAL)
    if why:
        raise RuntimeError(why)
    return flex(q, k, v, layout_block_mask(layout, q.device))

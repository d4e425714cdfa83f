"""Patch n' Pack (NaViT, Dehghani et al. 2023): cut examples into patches and pack them into fixed rows.

Every image (``C x H x W``) or video (``C x T x H x W``) keeps its own resolution. It is cut into
``pt x ph x pw`` patches, optionally loses a random subset of its tokens (token dropping, training only),
and is placed first-fit-decreasing into rows of exactly ``seq_len`` tokens. ``PackedBatch`` is the only
batch layout in mmvit: tokenizers, the trunk, the loaders and the trainer all speak it.

Layout of a row: the tokens of each example are contiguous, examples follow each other, padding comes last.
Example ``e`` (in output order) carries segment id ``e + 1`` everywhere in the batch, so segment ids are
unique across rows and ``segment_ids - 1`` indexes per-example tensors directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from mmvit.token_drop import RateSpec, make_rate_fn, num_kept

PatchSize = tuple[int, int, int]


def as_patch_size(patch_size: int | Sequence[int], tubelet: int = 1) -> PatchSize:
    """The one patch-size convention: ``p`` -> ``(tubelet, p, p)``, ``(ph, pw)`` -> ``(tubelet, ph, pw)``,
    ``(pt, ph, pw)`` as is. ``tubelet`` (frames per tubelet) applies only when no ``pt`` is given."""
    if isinstance(patch_size, bool):
        raise ValueError(f"patch_size must be an int or (pt, ph, pw) of positive ints, got {patch_size!r}")
    if isinstance(patch_size, int):
        ps: tuple[int, ...] = (tubelet, patch_size, patch_size)
    else:
        ps = tuple(int(p) for p in patch_size)
        if len(ps) == 2:
            ps = (tubelet, *ps)
    if len(ps) != 3 or min(ps) < 1:
        raise ValueError(f"patch_size must be an int, (ph, pw) or (pt, ph, pw) of positive ints, got {patch_size!r}")
    return ps  # type: ignore[return-value]


@dataclasses.dataclass
class PackedBatch:
    """Examples packed into ``B`` rows of ``L`` tokens. ``E`` examples in total, in output order.

    Attributes:
        patches: ``[B, L, C*pt*ph*pw]`` flattened patches, channel-major within a patch (matches a conv
            kernel ``[D, C, pt, ph, pw]``); zeros at padding.
        coords: ``[B, L, 3]`` integer patch coordinates ``(t, y, x)`` within the example.
        grid: ``[E, 3]`` patches per axis of each example (before token dropping).
        segment_ids: ``[B, L]``: ``e + 1`` for tokens of example ``e``, 0 for padding.
        example_ids: ``[E]`` index of each example in the input list.
        labels: ``[E]`` (optional) class labels, in output order.
        tasks: ``[E]`` (optional) index of each example's task (label space) in the run's class tables.
        patch_size: ``(pt, ph, pw)``.
        meta: optional per-example dicts (source path, video id, view...), in output order.
        full: (masked pretraining) the same examples with all their tokens, packed into rows of their own:
            the decoder/target packing of MAE and JEPA (see ``mmvit.pretrain.pack``).
        visible_index: on a ``full`` batch, ``[B_f, L_f]`` long: the flat index into the parent batch's
            ``[B*L]`` slots of the same token when it is visible there, -1 where masked or padding.
        parent_index: on a ``full`` batch, ``[E]``: the parent batch's example index of each example.
    """

    patches: torch.Tensor
    coords: torch.Tensor
    grid: torch.Tensor
    segment_ids: torch.Tensor
    example_ids: torch.Tensor
    labels: torch.Tensor | None = None
    tasks: torch.Tensor | None = None
    patch_size: PatchSize = (1, 16, 16)
    meta: list[dict[str, Any]] | None = None
    full: PackedBatch | None = None
    visible_index: torch.Tensor | None = None
    parent_index: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return int(self.example_ids.numel())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.segment_ids.shape)  # type: ignore[return-value]

    @property
    def lengths(self) -> torch.Tensor:
        """``[E]`` tokens of each example after dropping."""
        seg = self.segment_ids.reshape(-1)
        return torch.bincount(seg, minlength=self.num_examples + 1)[1:]

    @property
    def num_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / max(1, self.segment_ids.numel())

    def _map(self, fn) -> "PackedBatch":
        """A copy with ``fn`` applied to every tensor field (and to ``full``'s)."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
            elif isinstance(value, PackedBatch):
                changes[f.name] = value._map(fn)
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedBatch":
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def patchify(x: torch.Tensor, patch_size: PatchSize) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``[C, T, H, W]`` -> (``[nt*nh*nw, C*pt*ph*pw]``, ``(nt, nh, nw)``), row-major over (t, y, x).

    Pixels beyond a whole number of patches are cut off (ViViT: ``floor(T/t) x floor(H/h) x floor(W/w)``).
    """
    pt, ph, pw = patch_size
    c, t, h, w = x.shape
    nt, nh, nw = t // pt, h // ph, w // pw
    if nt == 0 or nh == 0 or nw == 0:
        raise ValueError(f"input of shape {tuple(x.shape)} is smaller than one patch {patch_size}")
    x = x[:, : nt * pt, : nh * ph, : nw * pw]
    x = x.reshape(c, nt, pt, nh, ph, nw, pw).permute(1, 3, 5, 0, 2, 4, 6)
    return x.reshape(nt * nh * nw, c * pt * ph * pw), (nt, nh, nw)


def unpatchify(patches: torch.Tensor, grid: Sequence[int], patch_size: PatchSize, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for a full (undropped) example: ``[N, C*pt*ph*pw]`` -> ``[C, T, H, W]``."""
    nt, nh, nw = grid
    pt, ph, pw = patch_size
    x = patches.reshape(nt, nh, nw, channels, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(channels, nt * pt, nh * ph, nw * pw)


def as_video(sample: torch.Tensor, pt: int) -> torch.Tensor:
    """``C x H x W`` images become ``C x pt x H x W`` (repeated frames, so a tubelet sees a still clip)."""
    if sample.dim() == 3:
        return sample.unsqueeze(1).expand(-1, pt, -1, -1)
    if sample.dim() == 4:
        return sample
    raise ValueError(f"a sample must be C x H x W or C x T x H x W, got shape {tuple(sample.shape)}")


def grid_coords(grid: tuple[int, int, int]) -> torch.Tensor:
    """``[nt*nh*nw, 3]`` integer (t, y, x) for every patch of a grid, row-major."""
    nt, nh, nw = grid
    t, y, x = torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij")
    return torch.stack([t, y, x], -1).reshape(-1, 3)


def first_fit_decreasing(lengths: Sequence[int], seq_len: int, max_per_row: int | None = None) -> list[list[int]]:
    """Assign items to rows of capacity ``seq_len``: longest first, each into the first row with room.

    Returns rows as lists of item indices in placement order. Every item appears exactly once. Equal
    lengths keep their input order.
    """
    n_items = len(lengths)
    order = sorted(range(n_items), key=lengths.__getitem__, reverse=True)  # stable, also with reverse
    # First fit in O(log rows) per item: a max-tree over the free room of rows 0..size-1. Rows not yet
    # opened are empty (room seq_len) and lie right of every open row, so the leftmost row with room is
    # exactly the row a linear first-fit scan would pick, or the next new row. A row that reaches
    # max_per_row gets room -1.
    size = 1
    while size < n_items:
        size *= 2
    tree = [seq_len] * (2 * size)
    rows: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
        j = 1
        while j < size:  # descend to the leftmost leaf with room >= n
            j += j
            if tree[j] < n:
                j += 1
        r = j - size
        if r == len(rows):
            rows.append([i])
        else:
            rows[r].append(i)
        tree[j] = -1 if max_per_row is not None and len(rows[r]) >= max_per_row else tree[j] - n
        while j > 1:  # refresh the maxima above the leaf; stop once one is unchanged
            j >>= 1
            a, b = tree[2 * j], tree[2 * j + 1]
            m = a if a > b else b
            if tree[j] == m:
                break
            tree[j] = m
    return rows


def _check_keep(idx: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """``keep[i]`` as a 1-D long tensor of sorted distinct indices in ``[0, n)``, or a ValueError."""
    idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.numel() == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"keep[{i}] must be a non-empty 1-D tensor of token indices, got shape "
                         f"{tuple(idx.shape)} dtype {idx.dtype}")
    idx = idx.long()
    if int(idx[0]) < 0 or int(idx[-1]) >= n or not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"keep[{i}] must be sorted distinct indices in [0, {n}), got {idx.tolist()[:8]}...")
    return idx


def pack(
    samples: Sequence[torch.Tensor],
    *,
    patch_size: int | Sequence[int],
    seq_len: int,
    max_per_row: int | None = None,
    drop_rate: RateSpec | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    tasks: Sequence[int] | torch.Tensor | None = None,
    meta: Sequence[dict] | None = None,
    num_rows: int | None = None,
    keep: Sequence[torch.Tensor | None] | None = None,
    pixels: bool = True,
) -> PackedBatch:
    """Patchify ``samples`` and pack them first-fit-decreasing into rows of exactly ``seq_len`` tokens.

    Args:
        samples: ``C x H x W`` images and/or ``C x T x H x W`` videos (same ``C``), any sizes.
        patch_size: ``(pt, ph, pw)`` or an int ``p`` for ``(1, p, p)``. Images are repeated to ``pt`` frames.
        seq_len: tokens per row.
        max_per_row: cap on examples per row (NaViT's E_max), ``None`` for no cap.
        drop_rate: token dropping (training only): a constant, a list of per-example rates, a dict spec (see
            ``mmvit.token_drop``) or a function ``(n_tokens, generator) -> rate``. At least one token per
            example is kept.
        generator: RNG for token dropping.
        labels, tasks, meta: per-example values in input order; returned in output order.
        num_rows: pad the batch to exactly this many rows (raises if more are needed).
        keep: planned tokens (masked pretraining), instead of ``drop_rate``: per sample, the sorted visible
            token indices (row-major over (t, y, x)) or ``None`` for all tokens. Kept tokens keep their
            coordinates, as with dropping.
        pixels: ``False`` lays the batch out without copying any pixels: ``patches`` is an empty
            ``[B, L, 0]`` tensor, for a caller that fills it from another packing of the same samples
            (:func:`mmvit.pretrain.pack_masked` gathers the visible tokens from its full batch).

    Raises:
        ValueError: an example (after dropping) is longer than ``seq_len``, or is smaller than a patch; ``keep``
            is not one sorted, non-empty set of distinct in-range indices per sample, or comes with a drop rate.
    """
    if len(samples) == 0:
        raise ValueError("pack() needs at least one sample")
    ps = as_patch_size(patch_size)
    pt, ph, pw = ps
    # rate_of(i, n): the drop rate of sample i with n tokens; planned per example, or drawn in input order.
    if isinstance(drop_rate, (list, tuple)) or (isinstance(drop_rate, torch.Tensor) and drop_rate.dim() == 1):
        rates = [float(r) for r in drop_rate]
        if len(rates) != len(samples):
            raise ValueError(f"{len(rates)} drop rates for {len(samples)} samples")
        rate_of = lambda i, n: rates[i]  # noqa: E731
    else:
        rate_fn = make_rate_fn(drop_rate)
        rate_of = None if rate_fn is None else (lambda i, n: rate_fn(n, generator))  # noqa: E731
    planned = None if keep is None else list(keep)  # (the loop below reuses the name keep for a count)
    if planned is not None:
        if rate_of is not None:
            raise ValueError("pack(): give either keep (planned tokens) or drop_rate, not both")
        if len(planned) != len(samples):
            raise ValueError(f"{len(planned)} keep entries for {len(samples)} samples")
    channels = samples[0].shape[0]

    # Pass 1: grid, kept tokens and length of every sample, from shapes alone (the generator is drawn in
    # the same order as a per-sample patchify would: rate, then permutation, sample by sample).
    videos: list[torch.Tensor] = []
    grids: list[tuple[int, int, int]] = []
    kept: list[torch.Tensor | None] = []
    lengths: list[int] = []
    for i, s in enumerate(samples):
        if s.shape[0] != channels:
            raise ValueError(f"sample {i} has {s.shape[0]} channels, sample 0 has {channels}")
        x = as_video(s, pt)
        g = (x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw)
        if min(g) == 0:
            raise ValueError(f"sample {i}: input of shape {tuple(x.shape)} is smaller than one patch {ps}")
        n = g[0] * g[1] * g[2]
        idx = None
        if planned is not None and planned[i] is not None:
            idx = _check_keep(planned[i], n, i)
            n = int(idx.numel())
            if n == g[0] * g[1] * g[2]:
                idx = None
        elif rate_of is not None:
            keep = num_kept(n, rate_of(i, n))
            if keep < n:
                idx = torch.randperm(n, generator=generator)[:keep].sort().values
                n = keep
        if n > seq_len:
            raise ValueError(f"sample {i} of shape {tuple(s.shape)} has {n} tokens at patch size {ps}, "
                             f"more than seq_len={seq_len}; resize it first")
        videos.append(x)
        grids.append(g)
        kept.append(idx)
        lengths.append(n)

    rows = first_fit_decreasing(lengths, seq_len, max_per_row)
    n_rows = len(rows) if num_rows is None else num_rows
    if len(rows) > n_rows:
        raise ValueError(f"{len(samples)} samples need {len(rows)} rows, more than num_rows={num_rows}")
    order = [i for row in rows for i in row]

    # Each example is contiguous in its row: its tokens go to flat [B*L] positions start .. start + n.
    starts: list[int] = []
    fill: list[int] = []  # real tokens per row
    for r, row in enumerate(rows):
        off = r * seq_len
        for i in row:
            starts.append(off)
            off += lengths[i]
        fill.append(off - r * seq_len)

    # Pass 2: patchify each sample straight into its place (one copy of the pixels), zero the padding.
    dim = channels * pt * ph * pw if pixels else 0
    dtype = samples[0].dtype
    flat_p = torch.empty(n_rows * seq_len, dim, dtype=dtype)
    for r in range(n_rows if pixels else 0):
        used = fill[r] if r < len(fill) else 0
        if used < seq_len:
            flat_p[r * seq_len + used:(r + 1) * seq_len].zero_()
    for i, start in zip(order if pixels else (), starts):
        x, (nt, nh, nw), idx = videos[i], grids[i], kept[i]
        # [C, nt*pt, nh*ph, nw*pw] -> [nt, nh, nw, C, pt, ph, pw]: row-major patches, channel-major inside.
        x = x[:, : nt * pt, : nh * ph, : nw * pw].view(channels, nt, pt, nh, ph, nw, pw).permute(1, 3, 5, 0, 2, 4, 6)
        if idx is None:
            flat_p[start:start + lengths[i]].view(nt, nh, nw, channels, pt, ph, pw).copy_(x)
        else:
            flat_p[start:start + lengths[i]] = x.reshape(nt * nh * nw, dim)[idx]

    # Coordinates and segment ids, vectorized: token k of an example has (t, y, x) from its patch index.
    lens = torch.tensor([lengths[i] for i in order], dtype=torch.long)
    total = int(lens.sum())
    first = torch.cumsum(lens, 0) - lens
    within = torch.arange(total) - torch.repeat_interleave(first, lens, output_size=total)
    dest = torch.repeat_interleave(torch.tensor(starts, dtype=torch.long), lens, output_size=total) + within
    patch_index = within
    if any(kept[i] is not None for i in order):
        patch_index = torch.cat([torch.arange(lengths[i]) if kept[i] is None else kept[i] for i in order])
    grid_t = torch.tensor([grids[i] for i in order], dtype=torch.long).view(-1, 3)
    nh_tok = torch.repeat_interleave(grid_t[:, 1], lens, output_size=total)
    nw_tok = torch.repeat_interleave(grid_t[:, 2], lens, output_size=total)
    flat_c = torch.zeros(n_rows * seq_len, 3, dtype=torch.long)
    flat_s = torch.zeros(n_rows * seq_len, dtype=torch.long)
    flat_c[dest] = torch.stack([patch_index // (nh_tok * nw_tok), patch_index // nw_tok % nh_tok,
                                patch_index % nw_tok], -1)
    flat_s[dest] = torch.repeat_interleave(torch.arange(1, len(order) + 1), lens, output_size=total)

    def reorder(values, what: str) -> torch.Tensor | None:
        if values is None:
            return None
        t = torch.as_tensor(values, dtype=torch.long)
        if len(t) != len(samples):
            raise ValueError(f"{len(t)} {what} for {len(samples)} samples")
        return t[torch.tensor(order)]

    out_labels, out_tasks = reorder(labels, "labels"), reorder(tasks, "tasks")
    out_meta = None
    if meta is not None:
        if len(meta) != len(samples):
            raise ValueError(f"{len(meta)} meta entries for {len(samples)} samples")
        out_meta = [meta[i] for i in order]
    return PackedBatch(
        patches=flat_p.view(n_rows, seq_len, dim),
        coords=flat_c.view(n_rows, seq_len, 3),
        grid=grid_t,
        segment_ids=flat_s.view(n_rows, seq_len),
        example_ids=torch.tensor(order, dtype=torch.long),
        labels=out_labels,
        tasks=out_tasks,
        patch_size=ps,
        meta=out_meta,
    )

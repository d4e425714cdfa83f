"""Fast paths against slow, obviously correct references: first-fit-decreasing, pack(), segments attention."""

import random

import pytest
import torch

import mmvit
from mmvit.models.attention import attend_segments
from mmvit.models.layout import build_layout
from mmvit.packing import as_patch_size, as_video, first_fit_decreasing, grid_coords, patchify
from mmvit.token_drop import make_rate_fn, num_kept
from tests.test_attention import _segments, reference


def linear_ffd(lengths, seq_len, max_per_row=None):
    """First fit decreasing by a linear scan over the rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, free = [], []
    for i in order:
        for r in range(len(rows)):
            if free[r] >= lengths[i] and (max_per_row is None or len(rows[r]) < max_per_row):
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(seq_len - lengths[i])
    return rows


def test_first_fit_decreasing_equals_linear_scan():
    rng = random.Random(0)
    for _ in range(2000):
        seq_len = rng.randint(1, 40)
        lengths = [rng.randint(1, seq_len) for _ in range(rng.randint(0, 70))]
        cap = rng.choice([None, 1, 2, 3, 5])
        assert first_fit_decreasing(lengths, seq_len, cap) == linear_ffd(lengths, seq_len, cap)


def reference_pack(samples, patch_size, seq_len, max_per_row=None, drop_rate=0.0, generator=None):
    """Patchify every sample, concatenate, scatter into rows (pack()'s former three-copy path)."""
    ps = as_patch_size(patch_size)
    rate_fn = make_rate_fn(drop_rate)
    tokens, coords, grids = [], [], []
    for s in samples:
        p, g = patchify(as_video(s, ps[0]), ps)
        c = grid_coords(g)
        if rate_fn is not None:
            keep = num_kept(len(p), rate_fn(len(p), generator))
            if keep < len(p):
                idx = torch.randperm(len(p), generator=generator)[:keep].sort().values
                p, c = p[idx], c[idx]
        tokens.append(p)
        coords.append(c)
        grids.append(g)
    rows = linear_ffd([len(t) for t in tokens], seq_len, max_per_row)
    patches = torch.zeros(len(rows), seq_len, tokens[0].shape[1])
    coord = torch.zeros(len(rows), seq_len, 3, dtype=torch.long)
    seg = torch.zeros(len(rows), seq_len, dtype=torch.long)
    e = 0
    for r, row in enumerate(rows):
        pos = 0
        for i in row:
            n = len(tokens[i])
            patches[r, pos:pos + n], coord[r, pos:pos + n], seg[r, pos:pos + n] = tokens[i], coords[i], e + 1
            pos, e = pos + n, e + 1
    order = [i for row in rows for i in row]
    return patches, coord, seg, torch.tensor([grids[i] for i in order]), torch.tensor(order)


@pytest.mark.parametrize("drop_rate", [0.0, 0.4, {"type": "beta", "mean": 0.3}])
def test_pack_equals_reference(drop_rate):
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        samples = []
        for i in range(int(torch.randint(1, 12, (), generator=gen))):
            h, w = (int(v) for v in torch.randint(8, 40, (2,), generator=gen))
            t = int(torch.randint(2, 6, (), generator=gen))
            shape = (3, t, h, w) if i % 3 == 0 else (3, h, w)
            samples.append(torch.randn(*shape, generator=gen))
        ps = [(1, 8, 8), (2, 8, 8), (1, 4, 8)][trial % 3]
        cap = [None, 2][trial % 2]
        seq_len = 200
        b = mmvit.pack(samples, patch_size=ps, seq_len=seq_len, max_per_row=cap, drop_rate=drop_rate,
                       generator=torch.Generator().manual_seed(trial))
        ref = reference_pack(samples, ps, seq_len, cap, drop_rate, torch.Generator().manual_seed(trial))
        for got, want in zip((b.patches, b.coords, b.segment_ids, b.grid, b.example_ids), ref):
            assert torch.equal(got, want)


def test_pack_pads_to_num_rows_with_zeros():
    samples = [torch.randn(3, 16, 16), torch.randn(3, 8, 24)]
    b = mmvit.pack(samples, patch_size=8, seq_len=8, num_rows=4)
    assert b.patches.shape[:2] == (4, 8) and (b.patches[2:] == 0).all() and (b.segment_ids[2:] == 0).all()


def test_segments_single_group_path():
    seg = _segments([[4, 4], [4]], 8)
    layout = build_layout(seg)
    assert len(layout.groups) == 1
    q, k, v = (torch.randn(layout.num_tokens, 2, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attend_segments(q, k, v, layout), reference(q, k, v, layout.token_example))

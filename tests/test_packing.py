import numpy as np
import pytest
import torch

import mmvit
from mmvit.packing import first_fit_decreasing, grid_coords, patchify, unpatchify


def _samples(gen, n=12, video_every=3):
    out = []
    for i in range(n):
        h, w = 8 * int(torch.randint(1, 6, (), generator=gen)), 8 * int(torch.randint(1, 6, (), generator=gen))
        if i % video_every == 0:
            out.append(torch.randn(3, 4, h, w, generator=gen))
        else:
            out.append(torch.randn(3, h, w, generator=gen))
    return out


def test_patchify_roundtrip_and_floor():
    x = torch.randn(3, 4, 16, 24)
    p, g = patchify(x, (2, 8, 8))
    assert g == (2, 2, 3) and p.shape == (12, 3 * 2 * 8 * 8)
    assert torch.equal(unpatchify(p, g, (2, 8, 8), 3), x)
    # Extra pixels are cut off, whole patches only.
    p2, g2 = patchify(torch.randn(3, 5, 17, 31), (2, 8, 8))
    assert g2 == (2, 2, 3)


def test_patch_layout_matches_conv():
    """A patch vector dotted with a flattened conv kernel [D, C, pt, ph, pw] equals conv3d."""
    x = torch.randn(3, 4, 16, 24)
    w = torch.randn(5, 3, 2, 8, 8)
    p, g = patchify(x, (2, 8, 8))
    ref = torch.nn.functional.conv3d(x[None], w, stride=(2, 8, 8))[0]          # [D, nt, nh, nw]
    ours = (p @ w.reshape(5, -1).T).T.reshape(5, *g)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_pack_nothing_lost_nothing_duplicated():
    gen = torch.Generator().manual_seed(1)
    samples = _samples(gen, 30)
    b = mmvit.pack(samples, patch_size=(2, 8, 8), seq_len=64, labels=list(range(30)))
    assert sorted(b.example_ids.tolist()) == list(range(30))
    assert torch.equal(b.labels, b.example_ids)
    assert b.patches.shape[:2] == b.segment_ids.shape == b.coords.shape[:2]
    assert b.patches.shape[1] == 64
    # Every example's tokens are present and equal its own patchified content.
    for e, i in enumerate(b.example_ids.tolist()):
        s = samples[i]
        x = s.unsqueeze(1).expand(-1, 2, -1, -1) if s.dim() == 3 else s
        ref, g = patchify(x, (2, 8, 8))
        mask = b.segment_ids == e + 1
        assert torch.equal(b.patches[mask], ref)
        assert tuple(b.grid[e].tolist()) == g
        assert torch.equal(b.coords[mask], grid_coords(g))
        rows = mask.any(1).nonzero().flatten()
        assert len(rows) == 1  # an example never spans rows
    assert (b.patches[b.segment_ids == 0] == 0).all()
    assert abs(b.padding_fraction - (b.segment_ids == 0).double().mean().item()) < 1e-6


def test_first_fit_decreasing_reference():
    lengths = [7, 5, 5, 4, 3, 3, 2, 1]
    rows = first_fit_decreasing(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(8))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # FFD by hand: 7+3, 5+5, 4+3+2+1
    assert [sorted(lengths[i] for i in r) for r in rows] == [[3, 7], [5, 5], [1, 2, 3, 4]]
    rows = first_fit_decreasing(lengths, 10, max_per_row=2)
    assert max(len(r) for r in rows) == 2


def test_pack_errors():
    with pytest.raises(ValueError, match="sample 1 .* more than seq_len=4"):
        mmvit.pack([torch.randn(3, 8, 8), torch.randn(3, 24, 24)], patch_size=8, seq_len=4)
    with pytest.raises(ValueError, match="smaller than one patch"):
        mmvit.pack([torch.randn(3, 4, 4)], patch_size=8, seq_len=4)
    with pytest.raises(ValueError, match="num_rows"):
        mmvit.pack([torch.randn(3, 16, 16)] * 3, patch_size=8, seq_len=4, num_rows=2)


def test_pack_fixed_rows_and_device_move():
    b = mmvit.pack([torch.randn(3, 16, 16)] * 3, patch_size=8, seq_len=8, num_rows=4)
    assert b.shape == (4, 8) and b.num_examples == 3 and b.lengths.tolist() == [4, 4, 4]
    moved = b.to("cpu")
    assert torch.equal(moved.patches, b.patches) and moved.patch_size == b.patch_size


def test_token_drop_counts_and_determinism():
    samples = [torch.randn(3, 32, 32) for _ in range(6)] + [torch.randn(3, 8, 8)]
    b1 = mmvit.pack(samples, patch_size=8, seq_len=16, drop_rate=0.5, generator=torch.Generator().manual_seed(3))
    b2 = mmvit.pack(samples, patch_size=8, seq_len=16, drop_rate=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b1.patches, b2.patches)
    lengths = dict(zip(b1.example_ids.tolist(), b1.lengths.tolist()))
    assert all(lengths[i] == 8 for i in range(6)) and lengths[6] == 1  # at least one token kept
    # Kept tokens keep their original coordinates (so position embeddings stay right).
    e = b1.example_ids.tolist().index(0)
    mask = b1.segment_ids == e + 1
    ref, _ = patchify(samples[0].unsqueeze(1), (1, 8, 8))
    coords = b1.coords[mask]
    idx = coords[:, 1] * 4 + coords[:, 2]
    assert torch.equal(b1.patches[mask], ref[idx])


def test_beta_drop_rate_moments():
    from mmvit.token_drop import make_rate_fn

    fn = make_rate_fn({"type": "beta", "mean": 0.4})
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([fn(100, g) for _ in range(4000)])
    assert abs(r.mean().item() - 0.4) < 0.02
    assert abs(r.var().item() - 0.3 * 0.4 * 0.6) < 0.01


def test_resolution_drop_rate_grows_with_tokens():
    from mmvit.token_drop import make_rate_fn

    fn = make_rate_fn({"type": "resolution", "min": 0.1, "max": 0.6, "min_tokens": 16, "max_tokens": 256})
    g = torch.Generator().manual_seed(0)
    small = sum(fn(16, g) for _ in range(200)) / 200
    large = sum(fn(256, g) for _ in range(200)) / 200
    assert abs(small - 0.1) < 0.01 and abs(large - 0.6) < 0.01


def test_per_example_drop_rates():
    samples = [torch.randn(3, 32, 32) for _ in range(3)]
    b = mmvit.pack(samples, patch_size=8, seq_len=16, drop_rate=[0.0, 0.5, 0.75],
                   generator=torch.Generator().manual_seed(0))
    lengths = dict(zip(b.example_ids.tolist(), b.lengths.tolist()))
    assert lengths == {0: 16, 1: 8, 2: 4}
    with pytest.raises(ValueError, match="2 drop rates for 3 samples"):
        mmvit.pack(samples, patch_size=8, seq_len=16, drop_rate=[0.1, 0.2])


@pytest.mark.parametrize("max_per_row", [None, 3])
def test_loader_selection_loses_nothing_and_every_batch_packs(max_per_row):
    """The loader's batch selection (select_examples over a waiting list, as the stream does) fed a stream of
    examples: each comes out in exactly one batch, every batch fits ``rows`` rows by first-fit-decreasing (so
    ``pack(..., num_rows=rows)`` succeeds), and no example waits unboundedly."""
    from mmvit.data.packer import select_examples

    rng = np.random.default_rng(0)
    seq_len, rows, buffer = 64, 3, 10
    lengths = {k: int(n) for k, n in enumerate(rng.integers(1, seq_len + 1, 400))}
    stream, waiting, out, waits, batch_no = iter(lengths), [], [], {}, 0
    arrived = {}
    while True:
        for k in stream:
            waiting.append(k)
            arrived[k] = batch_no
            if len(waiting) == buffer:
                break
        if not waiting:
            break
        keys = select_examples([(k, lengths[k]) for k in waiting], seq_len, rows, max_per_row)
        assert keys, "an empty batch would stall the stream"
        assert keys == [k for k in waiting if k in keys]  # in candidate (arrival) order
        packed_rows = first_fit_decreasing([lengths[k] for k in keys], seq_len, max_per_row)
        assert len(packed_rows) <= rows
        samples = [torch.zeros(1, 1, 8, lengths[k] * 8) for k in keys]  # [C, T, H, W]: lengths[k] 8x8 patches
        batch = mmvit.pack(samples, patch_size=(1, 8, 8), seq_len=seq_len, num_rows=rows, max_per_row=max_per_row)
        assert batch.num_examples == len(keys) and int(batch.lengths.sum()) == sum(lengths[k] for k in keys)
        for k in keys:
            waits[k] = batch_no - arrived[k]
        out += keys
        waiting = [k for k in waiting if k not in keys]
        batch_no += 1
    assert sorted(out) == sorted(lengths) and len(out) == len(set(out))
    assert max(waits.values()) <= buffer  # the oldest waiting example always fits an empty batch

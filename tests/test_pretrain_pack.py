"""Masked packing: pack(keep=...), pack_masked's two packings and their index maps, against brute force."""

import numpy as np
import pytest
import torch

import mmvit
from mmvit.packing import as_video, patchify
from mmvit.pretrain import MaskConfig, pack_masked, plan_masks, sample_grid


def _samples(gen, n=9):
    out = []
    for i in range(n):
        h, w = 8 * int(torch.randint(1, 5, (), generator=gen)), 8 * int(torch.randint(1, 5, (), generator=gen))
        t = 2 * int(torch.randint(1, 3, (), generator=gen))
        out.append(torch.randn(3, t, h, w, generator=gen) if i % 3 == 0 else torch.randn(3, h, w, generator=gen))
    return out


def _masked_batch(seed=0, ps=(2, 8, 8), seq_len=10, full_seq_len=20, preset="mae"):
    gen = torch.Generator().manual_seed(seed)
    samples = _samples(gen)
    visible = plan_masks(samples, ps, MaskConfig(preset=preset), np.random.default_rng(seed))
    labels = list(range(100, 100 + len(samples)))
    meta = [{"i": i} for i in range(len(samples))]
    batch = pack_masked(samples, visible, patch_size=ps, seq_len=seq_len, full_seq_len=full_seq_len, labels=labels,
                        meta=meta)
    return samples, visible, batch


def _tokens_by_example(batch):
    """{example: {patch index: flat slot}} by a Python loop over every slot (the brute force)."""
    out = {}
    seg, coords = batch.segment_ids.reshape(-1).tolist(), batch.coords.reshape(-1, 3).tolist()
    for slot, (s, (t, y, x)) in enumerate(zip(seg, coords)):
        if s:
            _, nh, nw = batch.grid[s - 1].tolist()
            out.setdefault(s - 1, {})[(t * nh + y) * nw + x] = slot
    return out


@pytest.mark.parametrize("preset", ["mae", "jepa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_pack_masked_matches_brute_force(seed, preset):
    ps = (2, 8, 8)
    samples, visible, batch = _masked_batch(seed, ps, preset=preset)
    full = batch.full
    assert full is not None and full.visible_index.shape == full.segment_ids.shape
    parent_tokens, full_tokens = _tokens_by_example(batch), _tokens_by_example(full)

    # The encoder batch holds exactly the visible tokens of each example; the full batch all of them.
    for e, i in enumerate(batch.example_ids.tolist()):
        assert sorted(parent_tokens[e]) == visible[i].tolist()
        assert batch.grid[e].tolist() == list(sample_grid(samples[i], ps))
    assert batch.labels.tolist() == [100 + i for i in batch.example_ids.tolist()]
    assert [m["i"] for m in full.meta] == full.example_ids.tolist()

    # parent_index and visible_index, slot by slot.
    expect = torch.full_like(full.visible_index.reshape(-1), -1)
    for f, i in enumerate(full.example_ids.tolist()):
        e = full.parent_index[f].item()
        assert batch.example_ids[e].item() == i
        assert torch.equal(full.grid[f], batch.grid[e])
        n = int(np.prod(full.grid[f].tolist()))
        assert sorted(full_tokens[f]) == list(range(n))
        pixels, _ = patchify(as_video(samples[i], ps[0]), ps)
        for patch, slot in full_tokens[f].items():
            expect[slot] = parent_tokens[e].get(patch, -1)
            # The full batch's patches are the pixels of every token: the MAE targets.
            assert torch.equal(full.patches.reshape(-1, full.patches.shape[-1])[slot], pixels[patch])
    assert torch.equal(full.visible_index.reshape(-1), expect)
    # A visible slot points at the same token: same coordinates, same pixels.
    vi = full.visible_index.reshape(-1)
    hit = vi >= 0
    assert torch.equal(batch.coords.reshape(-1, 3)[vi[hit]], full.coords.reshape(-1, 3)[hit])
    assert torch.equal(batch.patches.reshape(-1, batch.patches.shape[-1])[vi[hit]],
                       full.patches.reshape(-1, full.patches.shape[-1])[hit])
    assert int(hit.sum()) == batch.num_tokens


@pytest.mark.parametrize("preset", ["mae", "jepa"])
def test_encoder_batch_is_pack_with_keep(preset):
    # pack_masked cuts the pixels once (into the full batch) and gathers the encoder's from there: the result
    # is exactly pack(keep=visible), pixel for pixel, at padding too.
    ps = (2, 8, 8)
    samples, visible, batch = _masked_batch(1, ps, preset=preset)
    ref = mmvit.pack(samples, patch_size=ps, seq_len=10, keep=visible, labels=list(range(100, 100 + len(samples))))
    for name in ("patches", "coords", "grid", "segment_ids", "example_ids", "labels"):
        assert torch.equal(getattr(batch, name), getattr(ref, name)), name
    assert batch.patches.dtype == ref.patches.dtype and batch.patches.is_contiguous()


def test_pack_without_pixels_has_the_same_layout():
    ps = (2, 8, 8)
    samples, visible, _ = _masked_batch(0, ps)
    for keep in (None, visible):
        ref = mmvit.pack(samples, patch_size=ps, seq_len=20, keep=keep)
        bare = mmvit.pack(samples, patch_size=ps, seq_len=20, keep=keep, pixels=False)
        assert bare.patches.shape == (*ref.segment_ids.shape, 0)
        for name in ("coords", "grid", "segment_ids", "example_ids"):
            assert torch.equal(getattr(bare, name), getattr(ref, name)), name


def test_to_and_pin_memory_carry_the_full_batch(monkeypatch):
    _, _, batch = _masked_batch()
    moved = batch.to("meta")
    for b in (moved, moved.full):
        for name in ("patches", "coords", "grid", "segment_ids", "example_ids", "labels"):
            assert getattr(b, name).device.type == "meta", name
    assert moved.full.visible_index.device.type == "meta" and moved.full.parent_index.device.type == "meta"
    assert moved.full.full is None and moved.visible_index is None

    # This CPU build cannot pin; a stand-in shows every tensor, the full batch's included, goes through it.
    pinned = set()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.add(id(self)) or self.clone())
    out = batch.pin_memory()
    for t in (batch.patches, batch.full.patches, batch.full.visible_index, batch.full.parent_index,
              batch.full.segment_ids, batch.full.labels):
        assert id(t) in pinned
    assert torch.equal(out.full.visible_index, batch.full.visible_index)


def test_pack_keep_keeps_coordinates_and_checks_its_input():
    x = torch.randn(3, 16, 24)                      # grid 2 x 3 at patch 8
    keep = torch.tensor([0, 2, 5])
    b = mmvit.pack([x, torch.randn(3, 8, 8)], patch_size=8, seq_len=8, keep=[keep, None])
    e = b.example_ids.tolist().index(0)
    coords = b.coords[b.segment_ids == e + 1]
    assert coords.tolist() == [[0, 0, 0], [0, 0, 2], [0, 1, 2]]
    pixels, _ = patchify(as_video(x, 1), (1, 8, 8))
    assert torch.equal(b.patches[b.segment_ids == e + 1], pixels[keep])
    assert b.lengths.tolist()[e] == 3 and b.grid[e].tolist() == [1, 2, 3]
    for bad in (torch.tensor([2, 1]), torch.tensor([0, 0]), torch.tensor([0, 6]), torch.tensor([-1, 2]),
                torch.tensor([], dtype=torch.long), torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]])):
        with pytest.raises(ValueError, match="keep"):
            mmvit.pack([x], patch_size=8, seq_len=8, keep=[bad])
    with pytest.raises(ValueError, match="not both"):
        mmvit.pack([x], patch_size=8, seq_len=8, keep=[keep], drop_rate=0.5)
    with pytest.raises(ValueError, match="keep entries"):
        mmvit.pack([x], patch_size=8, seq_len=8, keep=[keep, keep])
    # Keeping everything is the unmasked packing.
    full = mmvit.pack([x], patch_size=8, seq_len=8, keep=[torch.arange(6)])
    ref = mmvit.pack([x], patch_size=8, seq_len=8)
    assert torch.equal(full.patches, ref.patches) and torch.equal(full.coords, ref.coords)


def test_pack_masked_rejects_improper_masks():
    x = torch.randn(3, 16, 16)
    for bad in (torch.arange(4), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="visible and one masked"):
            pack_masked([x], [bad], patch_size=8, seq_len=4, full_seq_len=4)
    with pytest.raises(ValueError, match="masks for"):
        pack_masked([x], [], patch_size=8, seq_len=4, full_seq_len=4)
    with pytest.raises(ValueError, match="seq_len"):
        pack_masked([x], [torch.tensor([1])], patch_size=8, seq_len=4, full_seq_len=3)


def test_rows_are_padded_as_asked():
    _, _, batch = _masked_batch()
    samples, visible, _ = _masked_batch()
    b = pack_masked(samples, visible, patch_size=(2, 8, 8), seq_len=10, full_seq_len=20, num_rows=batch.shape[0] + 1,
                    full_rows=batch.full.shape[0] + 2)
    assert b.shape[0] == batch.shape[0] + 1 and b.full.shape[0] == batch.full.shape[0] + 2
    assert (b.full.visible_index[-2:] == -1).all()

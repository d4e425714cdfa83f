"""data.cache_mb: decoded training samples kept across passes (mmvit/data/cache.py, mmvit/data/stream.py).

The reference is the loader without the cache: the same examples, plans, labels and skip counts; images
bit-identical; videos (decoded whole at their native size instead of scaled by the decoder) bit-identical to
the uncached loader reading them at their native size.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import mmvit.data.stream as stream
from mmvit.data import build_loader
from mmvit.data.cache import MAX_ITEM_FRACTION, DecodedCache
from mmvit.data.readers.video import VideoDecoder
from tests.test_data_loader import corpus, quiet  # noqa: F401  (fixtures: the generated corpus, quiet logs)

pytest.importorskip("av")


def make_cfg(corpus, **kw) -> dict:
    cfg = {"sources": [{"type": "image_list", "list": corpus["images"]},
                       {"type": "video_list", "list": corpus["videos"], "weight": 1.5}],
           "seq_len": 96, "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "frames": 4,
           "resolution": {"type": "uniform", "min": 16, "max": 48}, "num_classes": 3, "max_image_pixels": 4_000_000,
           "video_backend": "pyav", "max_bad_fraction": 0.9, "num_workers": 0, "pack_buffer": 16,
           "batches_per_epoch": 8, "augment": {"flip": 0.5, "crop_scale": [0.5, 1.0]}}
    cfg.update(kw)
    return cfg


def run(cfg, epochs=3):
    """Batches of ``epochs`` passes, the skip counts and the loader's cache (None without one)."""
    loader, control = build_loader(cfg, split="train", rank=0, world_size=1, seed=0, train=True)
    out = [b for _ in range(epochs) for b in loader]
    return out, control.stats(), loader.dataset._cache


def per_example(batch):
    """``{(id, kind): tokens [n, C]}`` of a batch."""
    return {(m["id"], m["kind"]): batch.patches[batch.segment_ids == e + 1] for e, m in enumerate(batch.meta)}


@pytest.fixture
def decodes(monkeypatch):
    """Counts of image decodes and video reads per sample id, from the loader's own calls."""
    calls: collections.Counter = collections.Counter()
    image, read = stream.decode_image, VideoDecoder.read

    def counted_image(src, name, *args, **kwargs):
        calls[name] += 1
        return image(src, name, *args, **kwargs)

    def counted_read(self, src, name, *args, **kwargs):
        calls[name] += 1
        return read(self, src, name, *args, **kwargs)

    monkeypatch.setattr(stream, "decode_image", counted_image)
    monkeypatch.setattr(VideoDecoder, "read", counted_read)
    return calls


def test_cached_batches_are_the_uncached_ones(corpus, monkeypatch):
    plain, plain_stats, none = run(make_cfg(corpus))
    cached, cached_stats, cache = run(make_cfg(corpus, cache_mb=64))
    assert none is None and cache is not None and cache.hits > 0
    assert plain_stats["bad_total"] == cached_stats["bad_total"] > 0   # bad samples still skipped, and counted
    assert plain_stats["good_total"] == cached_stats["good_total"]
    # The exact reference for videos: the uncached loader reading every clip at its native size (the decoder
    # does not scale), then the same crop and resize.
    monkeypatch.setattr(stream, "decode_plan", lambda hw, box, size: (hw, box))
    native, _, _ = run(make_cfg(corpus))
    kinds = collections.Counter()
    for a, b, c in zip(plain, cached, native, strict=True):
        assert a.meta == b.meta == c.meta and a.patch_size == b.patch_size
        assert torch.equal(a.segment_ids, b.segment_ids) and torch.equal(a.coords, b.coords)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(b.patches, c.patches)
        ea, eb = per_example(a), per_example(b)
        for key, x in ea.items():
            kinds[key[1]] += 1
            if key[1] == "image":
                assert torch.equal(x, eb[key]), key
            else:
                # Against the decoder's own downscale (the default read): the same crop of the same frames,
                # resampled along another path (measured mean |difference| up to 0.23 on these clips, whose
                # pixels have a standard deviation of 1.4-1.7 in normalised units; a wrong crop, flip or frame
                # differs by about 1 or more).
                diff = (x - eb[key]).abs()
                assert diff.mean() < 0.35, (key, float(diff.mean()))
    assert kinds["image"] > 10 and kinds["video"] > 10


def test_later_passes_decode_nothing_that_was_cached(corpus, decodes):
    out, _, cache = run(make_cfg(corpus, cache_mb=64), epochs=1)
    first = collections.Counter(decodes)
    cached_ids = {key[1] for key in cache.items}
    assert cached_ids, "nothing was cached"
    decodes.clear()
    loader, _ = build_loader(make_cfg(corpus, cache_mb=64), split="train", rank=0, world_size=1, seed=0, train=True)
    loader.dataset._cache = cache   # the same process's cache, as a persistent worker keeps it
    for _ in range(2):
        for _ in loader:
            pass
    # Good samples seen in the first pass are never decoded again; bad ones are tried (and skipped) each time.
    paths = {m["path"]: m["id"] for b in out for m in b.meta}
    assert {paths.get(p) for p in first} >= cached_ids   # the counts name the samples: every cached one was decoded
    again = {p for p in decodes if paths.get(p) in cached_ids}
    assert not again, sorted(again)
    assert cache.hits > 0 and cache.misses >= len(cache.items)


def test_a_small_budget_caches_what_fits_and_changes_nothing(corpus):
    """100 KB: the images (<= 5 KB decoded) fit its 1/16 share per sample, no video does, so every video is
    read as without a cache and the batches are bit-identical to the uncached ones."""
    plain, _, _ = run(make_cfg(corpus), epochs=2)
    cached, _, cache = run(make_cfg(corpus, cache_mb=100 / 1024), epochs=2)
    for a, b in zip(plain, cached, strict=True):
        assert a.meta == b.meta and torch.equal(a.patches, b.patches)
    assert cache.items and all(frames.shape[0] == 1 for _, frames in cache.items.values())   # images only
    assert cache.bytes <= cache.max_bytes and not cache.evictions
    assert cache.misses == len(cache.items)   # each image missed once; videos too big were never looked up


def test_evaluation_has_no_cache(corpus):
    loader, _ = build_loader(make_cfg(corpus, cache_mb=64), split="train", rank=0, world_size=1, seed=0, train=False)
    assert [b for b in loader] and loader.dataset.decoded_cache() is None


def test_decoded_cache_is_least_recently_used_within_its_bytes():
    cache = DecodedCache(max_mb=1)                  # 1 MiB; one sample at most 64 KiB
    item = int(cache.max_bytes * MAX_ITEM_FRACTION) // 3   # pixels of a sample at the per-sample limit
    frames = {k: np.full((1, 1, item, 3), k, np.uint8) for k in range(20)}
    for k in range(16):
        cache.put(k, {"k": k}, frames[k])
    assert cache.bytes == 16 * item * 3 <= cache.max_bytes and not cache.evictions
    assert cache.get(0) is frames[0]                # 0 is now the most recently used
    cache.put(16, {}, frames[16])                   # over the budget: the least recently used (1) goes
    assert cache.evictions == 1 and 1 not in cache.items and 0 in cache.items
    assert cache.bytes == sum(f.nbytes for _, f in cache.items.values()) <= cache.max_bytes
    assert cache.info(5) == {"k": 5} and cache.get(1) is None
    big = np.zeros((1, 1, item + 1, 3), np.uint8)   # over a sample's share: not cached, nothing evicted
    cache.put("big", {}, big)
    assert "big" not in cache.items and cache.evictions == 1
    assert cache.stats() == {"items": 16, "mb": round(16 * item * 3 / 2**20, 1), "hits": 1, "misses": 1,
                             "evictions": 1}

"""Decoded training samples kept in memory across passes (``data.cache_mb``), for datasets that fit.

A small dataset read for many epochs (a demo, a labelled fraction, a probe's training split) decodes each
file again on every pass; on a CPU machine that decoding is most of a loader worker's time. This cache keeps a
sample's decoded pixels at their native size, as uint8 ``[T, H, W, 3]`` (``T = 1`` for images; every frame for
videos), with the size read when it was admitted, so later passes neither probe nor decode it. What a batch
holds is unchanged: crops, flips, sizes, frames and masks are planned from each draw's own RNG as before, and
cut from the cached pixels.

The cache is per process (each DataLoader worker its own, kept across epochs by persistent workers) and
least-recently-used within ``cache_mb``. A video is cached whole only if all its frames fit in
:data:`MAX_ITEM_FRACTION` of the budget; bigger ones are decoded as without a cache, frame by frame at the
size their crop needs.
"""

from __future__ import annotations

import collections

import numpy as np

MAX_ITEM_FRACTION = 1 / 16  # of the budget, for one sample: a long video is not decoded whole to be cached


class DecodedCache:
    """``(key) -> (info, frames uint8 [T, H, W, 3])``, least recently used first out, at most ``max_bytes``."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.items: collections.OrderedDict = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def fits(self, nbytes: int) -> bool:
        """Whether a sample of ``nbytes`` decoded bytes is small enough to be cached."""
        return nbytes <= self.max_bytes * MAX_ITEM_FRACTION

    def info(self, key) -> dict | None:
        """The size of a cached sample (no hit counted: admission asks before the sample is planned)."""
        got = self.items.get(key)
        return None if got is None else got[0]

    def get(self, key) -> np.ndarray | None:
        got = self.items.get(key)
        if got is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return got[1]

    def put(self, key, info: dict, frames: np.ndarray) -> None:
        if key in self.items or not self.fits(frames.nbytes):
            return
        self.items[key] = (dict(info), frames)
        self.bytes += frames.nbytes
        while self.bytes > self.max_bytes:
            _, (_, old) = self.items.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1

    def stats(self) -> dict:
        return {"items": len(self.items), "mb": round(self.bytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}

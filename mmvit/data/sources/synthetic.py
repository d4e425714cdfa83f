"""``synthetic``: images and clips generated in memory, for smoke tests, CI and benchmarks (no files).

Every class has a fixed colour; an item is its class colour plus Gaussian noise, as an image or a clip, at a
random native size and aspect ratio, so a tiny model learns it in a few dozen steps. Item ``i`` is a pure
function of ``(seed, i)``: the same config gives the same data whatever the ranks, workers or order, and
``seed`` tells splits apart. It goes through the same loader as file sources (planning, resizing, packing,
views), so whatever a test shows on it holds for the real pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mmvit.data.rng import Purpose, rng
from mmvit.data.sources.base import IndexedSource, Item, SourceContext, ViewsConfig
from mmvit.registry import DATASETS
from mmvit.typed import check_range


@DATASETS.register("synthetic")
class Synthetic(IndexedSource):
    """Generated images and clips.

    Args:
        num_samples: items in the source.
        num_classes: labels ``0 .. num_classes - 1``, drawn uniformly.
        video_fraction: share of items that are clips.
        frames: frames of a clip, ``[lo, hi]`` (inclusive), drawn per item.
        side: the item's size: ``sqrt(h * w)`` in pixels, ``[lo, hi]``.
        aspect: ``w / h`` range (log-uniform).
        noise: standard deviation of the per-pixel noise, in 0..255 units.
        seed: the items' own seed (use another value for another split of the same classes).
        palette: the seed of the class colours (the same for every split of one task).
    """

    has_views = True

    def __init__(self, num_samples: int = 256, num_classes: int = 10, video_fraction: float = 0.5,
                 frames: tuple[int, int] = (4, 8), side: tuple[int, int] = (16, 48),
                 aspect: tuple[float, float] = (0.5, 2.0), noise: float = 40.0, seed: int = 0, palette: int = 0,
                 weight: float = 1.0,
                 views: dict | None = None, name: str | None = None, *, ctx: SourceContext | None = None):
        where = f"synthetic source {name or ''}".rstrip()
        for value, bounds, key in ((num_samples, {"ge": 0}, "num_samples"), (num_classes, {"ge": 1}, "num_classes"),
                                   (video_fraction, {"ge": 0, "le": 1}, "video_fraction"), (frames, {"ge": 1}, "frames"),
                                   (side, {"ge": 1}, "side"), (aspect, {"gt": 0}, "aspect"), (noise, {"ge": 0}, "noise"),
                                   (weight, {"gt": 0}, "weight")):
            check_range(value, bounds, f"{where}.{key}")
        self.num_samples, self.num_classes, self.video_frac = num_samples, num_classes, video_fraction
        self.frames, self.side, self.aspect, self.noise, self.seed = frames, side, aspect, noise, seed
        self.weight, self.views, self.name = float(weight), ViewsConfig.parse(views), name or f"synthetic/{seed}"
        palette = rng(Purpose.SYNTH_PALETTE, palette).uniform(30, 225, (num_classes, 3))
        self.palette = palette.astype(np.float32)

    def __len__(self) -> int:
        return self.num_samples

    def video_fraction(self) -> float:
        return self.video_frac

    def declared_num_classes(self) -> int:
        return self.num_classes

    def item(self, index: int) -> Item:
        r = rng(Purpose.SYNTH_ITEM, self.seed, index)
        video = bool(r.random() < self.video_frac)
        label = int(r.integers(self.num_classes))
        side = r.uniform(*self.side)
        aspect = math.exp(r.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        h = max(1, round(side / math.sqrt(aspect)))
        w = max(1, round(side * math.sqrt(aspect)))
        frames = int(r.integers(self.frames[0], self.frames[1] + 1)) if video else 1
        return Item(kind="video" if video else "image", path=f"{self.name}#{index}", id=str(index), label=label,
                    info={"width": w, "height": h, "frames": frames, "fps": 8.0 if video else 0.0})

    def load(self, item: Item, frames: Sequence[int]) -> np.ndarray:
        index = int(item.id)
        h, w = int(item.info["height"]), int(item.info["width"])
        colour = self.palette[item.label]
        out = np.empty((len(frames), h, w, 3), np.uint8)
        for k, f in enumerate(frames):  # frame f's noise is its own: repeated indices give identical frames
            noise = rng(Purpose.SYNTH_PIXELS, self.seed, index, int(f)).normal(0.0, self.noise, (h, w, 3))
            out[k] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        return out

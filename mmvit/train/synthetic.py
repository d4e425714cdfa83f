"""A synthetic in-memory dataset of images and videos at random native resolutions, packed with Patch n' Pack.

For smoke tests, CI and benchmarks of the trainer: no files, no workers, and the same interface as
``mmvit.data.build_loader`` (a loader of ``PackedBatch`` of exactly ``[batch_rows, seq_len]`` and a control
with ``set_stage``, ``state_dict``/``load_state_dict`` and ``stats``). Select it with ``data.type: synthetic``.

Every class has a fixed random colour; an example is its class colour plus Gaussian noise, as an image or a
clip, so a tiny model learns it in a few dozen steps. Batch ``g`` of a split is a pure function of
``(seed, split, g, stage)``. The stream is global: rank ``r`` of ``W`` takes batches ``r, r + W, ...``, and
the data position is the count of batches consumed by all ranks together. So a run on 2 ranks with 2
accumulation steps and a run on 1 rank with 4 see the same examples in every step, which makes runs
comparable across world sizes (the universal-checkpoint test relies on it).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mmvit.config import from_dict
from mmvit.packing import PackedBatch, pack


@dataclasses.dataclass
class SyntheticConfig:
    """The ``data:`` section with ``type: synthetic``; keys shared with the real loader mean the same."""

    type: str = "synthetic"
    num_classes: int = 10
    seq_len: int = 64
    batch_rows: int = 2
    max_per_row: int | None = None
    patch_sizes: list = dataclasses.field(default_factory=lambda: [8])  # one drawn per batch
    tubelet: int = 1                     # pt for int patch sizes
    resolution: Any = dataclasses.field(default_factory=lambda: {"type": "uniform", "min": 16, "max": 48})
    frames: int = 4
    video_fraction: float = 0.5          # share of examples that are clips
    channels: int = 3
    noise: float = 1.0                   # std of the per-pixel noise around the class colour
    eval_batches: int = 4                # batches of a non-training split, over all ranks together

    def __post_init__(self):
        if self.type != "synthetic":
            raise ValueError(f"SyntheticConfig is for data.type synthetic, got {self.type!r}")
        if not 0.0 <= self.video_fraction <= 1.0:
            raise ValueError(f"data.video_fraction must be in [0, 1], got {self.video_fraction}")


def _patch(p: int | list, tubelet: int) -> tuple[int, int, int]:
    if isinstance(p, int):
        return (tubelet, p, p)
    p = [int(v) for v in p]
    return tuple([tubelet, *p] if len(p) == 2 else p)  # type: ignore[return-value]


def _draw_side(spec: Any, rng: np.random.Generator) -> float:
    """One side length (or, in ``mode: tokens``, tokens per frame) from a resolution spec."""
    if isinstance(spec, (int, float)):
        return float(spec)
    kind = spec.get("type", "uniform")
    if kind == "fixed":
        values = spec["values"]
        return float(values[int(rng.integers(len(values)))])
    lo, hi = float(spec.get("min", 64)), float(spec.get("max", 256))
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "truncnorm":
        mean = float(spec["mean"]) if spec.get("mean") is not None else lo
        std = float(spec["std"]) if spec.get("std") is not None else (hi - lo) / 2
        for _ in range(100):
            x = float(rng.normal(mean, std))
            if lo <= x <= hi:
                return x
        return min(max(mean, lo), hi)
    raise ValueError(f"synthetic data: unknown resolution type {kind!r} (uniform, truncnorm or fixed)")


def _seed(*parts: Any) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


class SyntheticControl:
    """What the trainer steers: the stage, the data position, statistics."""

    def __init__(self, cfg: SyntheticConfig, stage: dict | None, world_size: int):
        self.cfg = cfg
        self.stage = dict(stage or {})
        self.world_size = world_size
        self.consumed = 0               # batches consumed by all ranks together (training split)
        self.batches = 0
        self.padding_sum = 0.0
        self.examples = 0

    def set_stage(self, stage: dict | None) -> None:
        unknown = [k for k in (stage or {}) if k not in ("resolution", "token_budget", "frames", "patch_size")]
        if unknown:
            raise KeyError(f"stage: unknown keys {unknown}; valid: resolution, token_budget, frames, patch_size")
        self.stage = dict(stage or {})

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        # Global position: valid for any world size (every rank consumes the same number of batches).
        self.consumed = int(state["consumed"])

    def stats(self) -> dict:
        """The keys of the real loader's ``stats()`` that apply here (nothing is ever bad)."""
        return {"bad": {}, "bad_total": 0, "good_total": self.examples, "batches": self.batches,
                "padding_mean": self.padding_sum / max(1, self.batches),
                "examples_per_batch": self.examples / max(1, self.batches)}


class SyntheticLoader:
    """Iterable of ``PackedBatch``. Training splits never end; other splits yield ``eval_batches`` in total."""

    def __init__(self, cfg: SyntheticConfig, control: SyntheticControl, *, split: str, rank: int, world_size: int,
                 seed: int, train: bool):
        self.cfg, self.control = cfg, control
        self.split, self.rank, self.world_size, self.seed, self.train = split, rank, world_size, seed, train
        colours = np.random.default_rng(_seed(seed, "colours"))
        self.colours = torch.from_numpy(colours.uniform(-1.0, 1.0, (cfg.num_classes, cfg.channels))).float()

    def __iter__(self) -> Iterator[PackedBatch]:
        if not self.train:
            for g in range(self.rank, self.cfg.eval_batches, self.world_size):
                yield self.make_batch(g, self.control.stage)
            return
        while True:
            # Rank r takes global batch consumed + r; then all ranks have moved on by world_size.
            g = self.control.consumed + self.rank
            batch = self.make_batch(g, self.control.stage)
            self.control.consumed += self.world_size
            yield batch

    def _example(self, rng: np.random.Generator, stage: dict, patch: tuple[int, int, int]):
        cfg = self.cfg
        pt, ph, pw = patch
        video = bool(rng.random() < cfg.video_fraction)
        frames = max(pt, int(stage.get("frames") or cfg.frames)) if video else 1
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        if stage.get("token_budget") is not None:
            per_frame = max(1.0, float(stage["token_budget"]) / (frames // pt if video else 1))
            side = math.sqrt(per_frame * ph * pw)
        else:
            spec = stage.get("resolution") or cfg.resolution
            side = _draw_side(spec, rng)
            if isinstance(spec, dict) and spec.get("mode") == "tokens":
                side = math.sqrt(side * ph * pw)
        nh = max(1, int(side * math.sqrt(aspect) / ph))
        nw = max(1, int(side / math.sqrt(aspect) / pw))
        per_frame_cap = cfg.seq_len // (frames // pt if video else 1)
        while nh * nw > max(1, per_frame_cap):  # shrink, keeping the aspect, until the example fits a row
            nh, nw = max(1, nh * 9 // 10), max(1, nw * 9 // 10)
        label = int(rng.integers(cfg.num_classes))
        shape = (cfg.channels, frames, nh * ph, nw * pw) if video else (cfg.channels, nh * ph, nw * pw)
        tokens = (frames // pt if video else 1) * nh * nw
        return shape, label, tokens, video

    def make_batch(self, g: int, stage: dict) -> PackedBatch:
        """Global batch ``g`` of this split at ``stage``: examples drawn until the rows are full."""
        cfg = self.cfg
        rng = np.random.default_rng(_seed(self.seed, self.split, g))
        if stage.get("patch_size") is not None:
            patch = _patch(stage["patch_size"], cfg.tubelet)
        else:
            patch = _patch(cfg.patch_sizes[int(rng.integers(len(cfg.patch_sizes)))], cfg.tubelet)
        capacity = cfg.batch_rows * cfg.seq_len
        specs, used = [], 0
        while True:
            spec = self._example(rng, stage, patch)
            if used + spec[2] > capacity:
                break
            specs.append(spec)
            used += spec[2]
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        samples = []
        for shape, label, _, _ in specs:
            colour = self.colours[label].view(-1, *([1] * (len(shape) - 1)))
            samples.append(colour + cfg.noise * torch.randn(shape, generator=gen))
        labels = [s[1] for s in specs]
        meta = [{"kind": "video" if s[3] else "image", "id": f"{self.split}/{g}/{i}"} for i, s in enumerate(specs)]
        while True:  # first-fit may need more rows than the token count suggests: drop the last example
            try:
                batch = pack(samples, patch_size=patch, seq_len=cfg.seq_len, max_per_row=cfg.max_per_row,
                             labels=labels, meta=meta, num_rows=cfg.batch_rows)
                break
            except ValueError:
                if len(samples) == 1:
                    raise
                samples, labels, meta = samples[:-1], labels[:-1], meta[:-1]
        self.control.batches += 1
        self.control.examples += batch.num_examples
        self.control.padding_sum += batch.padding_fraction
        return batch


def build_loader(data_cfg: dict, *, split: str, rank: int, world_size: int, seed: int, stage: dict | None = None,
                 train: bool) -> tuple[SyntheticLoader, SyntheticControl]:
    """The synthetic counterpart of ``mmvit.data.build_loader``."""
    cfg = from_dict(SyntheticConfig, data_cfg, "data")
    control = SyntheticControl(cfg, stage, world_size)
    return SyntheticLoader(cfg, control, split=split, rank=rank, world_size=world_size, seed=seed, train=train), control

"""The demo dataset: real handwritten digits as images at native resolutions, and as moving-digit videos.

Built for ``make demo`` from the 1,797 real 8x8 scans (16 grey levels) that scikit-learn ships
(``sklearn.datasets.load_digits``), so nothing is downloaded. It exercises what NaViT (Patch n' Pack,
Dehghani et al. 2023) is about: every example keeps its own resolution and aspect ratio, and images and
videos share one model and its packs, each with its own label space (task) and head:

* task ``digits``, images, labels 0-9: the digit, smoothly upsampled into an RGB canvas of 32..96 px per side
  (aspect ratio 1:2 to 2:1), with random tints, placement, scale, contrast and noise; stored as PNG.
* task ``motion``, videos, labels N, NE, E, SE, S, SW, W, NW (that order is the class table): a digit moving
  in that direction on an RGB canvas of 32..80 px per side (even), 8..16 frames at 8 fps, stored as H.264
  (yuv420p) mp4. The digit shown is random.

The canvas of a clip is a torus: the digit leaves one edge and comes back at the opposite one, and its start
is uniform over the canvas. So at every frame index its position is uniform whatever the direction, and no
single frame says anything about the label; only the change between frames does. (Had the trajectory to fit
inside the canvas, the first frame of an eastward clip would sit on the left more often than not.)

The scans are split per digit into train/val/test (60/15/25 %), so no scan is seen in two splits. Every
sample draws from its own generator seeded by ``(seed, kind, split, index)``: a fixed seed gives the same PNG
bytes and the same decoded frames, and growing a count leaves the existing samples unchanged.

Layout under ``out``::

    images/{split}/NNNNNN.png    videos/{split}/NNNNNN.mp4
    {split}_images.txt           "path label" lines, paths relative to ``out`` (labels 0-9), shuffled
    {split}_videos.txt           the same for the clips (labels N .. NW)
    shards/{split}_{images,videos}-NNNNNN.tar    webdataset: png or mp4 (the file's bytes), cls, json (sidecar)
    manifest.json                seed, counts, tasks and their classes, per-class counts per split; written last
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Direction = Literal["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
DIRECTIONS: tuple[Direction, ...] = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
SPLITS = ("train", "val", "test")
NUM_DIGITS = 10
# Two label spaces ("tasks"), each its own head: the digit an image shows (labels 0-9, written as integers)
# and the direction a clip's digit moves (written as names, in this order in the class table).
TASKS = {"digits": tuple(str(d) for d in range(NUM_DIGITS)), "motion": DIRECTIONS}
DEFAULT_COUNTS = {"images": (9000, 300, 600), "videos": (960, 160, 320)}
FORMAT_VERSION = 5  # bump when the generator changes, so old outputs are rebuilt

_SCAN_FRACTIONS = (0.60, 0.15, 0.25)
_IMAGE_SIDES = (32, 96)
_CLIP_SIDES = (32, 80)
_CLIP_FRAMES = (8, 16)
_FPS = 8
_MAX_ASPECT = 2.0
_KIND_IDS = {"images": 0, "videos": 1}
_SHARD_MAXCOUNT = 1000


def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digit scans as float32 ``[N, 8, 8]`` in [0, 1], and their labels ``[N]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_scans(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Disjoint scan indices for train/val/test, split per digit so every split holds every digit."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    parts: list[list[np.ndarray]] = [[], [], []]
    for d in range(NUM_DIGITS):
        idx = rng.permutation(np.flatnonzero(labels == d))
        cut1 = round(len(idx) * _SCAN_FRACTIONS[0])
        cut2 = cut1 + round(len(idx) * _SCAN_FRACTIONS[1])
        for part, chunk in zip(parts, (idx[:cut1], idx[cut1:cut2], idx[cut2:])):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _sample_size(rng: np.random.Generator, lo: int, hi: int, even: bool) -> tuple[int, int]:
    """(H, W) with both sides in [lo, hi] and aspect ratio within 1:2..2:1 (log-uniform), by rejection."""
    while True:
        h = int(rng.integers(lo, hi + 1))
        w = round(h * np.exp(rng.uniform(-np.log(_MAX_ASPECT), np.log(_MAX_ASPECT))))
        if even:
            h, w = h - h % 2, w - w % 2
        if lo <= h <= hi and lo <= w <= hi:
            return h, w


def _tints(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright digit of random hue on a dark background of random hue (fixed polarity).

    With both polarities, a small model first has to learn contrast invariance before it sees
    digits or motion at all; in the demo's few minutes of training it never got there (measured: images at
    chance and motion unlearned after 1,500 steps). Used for images and clips alike.
    """
    return rng.uniform(0.6, 1.0, 3), rng.uniform(0.0, 0.3, 3)


def _sprite(scan: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The scan upsampled bicubically to ``[h, w]`` coverage in [0, 1], with a random gamma (contrast)."""
    # A one-pixel empty border lets strokes that touch the 8x8 frame fade out instead of ending in a cliff.
    padded = np.pad(np.clip(scan, 0.0, 1.0), 1)
    img = Image.fromarray(np.round(padded * 255).astype(np.uint8))  # 2-D uint8: mode "L"
    alpha = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return alpha ** rng.uniform(0.6, 1.5)


def _compose(alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Tint a coverage map ``[..., H, W]`` and add Gaussian noise: uint8 ``[..., H, W, 3]``."""
    rgb = bg + (fg - bg) * alpha[..., None]
    rgb = rgb + rng.normal(0.0, noise, rgb.shape)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def render_digit_image(scan: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One digit image.

    Args:
        scan: an 8x8 scan with values in [0, 1].
        size: canvas ``(H, W)``.
        rng: source of all the randomness (tints, scale, placement, contrast, noise).

    Returns:
        uint8 ``[H, W, 3]``.
    """
    h, w = size
    base = min(h, w) * rng.uniform(0.7, 0.95)
    bh = int(np.clip(round(base * rng.uniform(0.85, 1.15)), 8, h))
    bw = int(np.clip(round(base * rng.uniform(0.85, 1.15)), 8, w))
    alpha = np.zeros((h, w), np.float32)
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    alpha[top : top + bh, left : left + bw] = _sprite(scan, bh, bw, rng)
    fg, bg = _tints(rng)
    return _compose(alpha, fg, bg, rng.uniform(0.0, 0.05), rng)


def direction_vector(direction: Direction) -> tuple[float, float]:
    """Unit step ``(dy, dx)`` in image coordinates (y grows downwards): N is ``(-1, 0)``."""
    angle = np.deg2rad(45.0 * DIRECTIONS.index(direction))  # clockwise from north
    return -float(np.cos(angle)), float(np.sin(angle))


def render_motion_clip(
    digit_img: np.ndarray, direction: Direction, size: tuple[int, int], frames: int, rng: np.random.Generator
) -> np.ndarray:
    """A digit moving in a straight line on a toroidal canvas.

    Args:
        digit_img: an 8x8 scan with values in [0, 1].
        direction: one of ``DIRECTIONS``.
        size: canvas ``(H, W)``.
        frames: clip length ``T``.
        rng: source of all the randomness (sprite, start, speed, tints, noise).

    Returns:
        uint8 ``[T, H, W, 3]``.
    """
    h, w = size
    side = min(h, w)
    # At most half of each side, so the digit never overlaps itself across the wrap.
    base = side * rng.uniform(0.35, 0.5)
    bh = int(np.clip(round(base * rng.uniform(0.85, 1.15)), 6, h // 2))
    bw = int(np.clip(round(base * rng.uniform(0.85, 1.15)), 6, w // 2))
    sprite = np.zeros((h, w), np.float32)
    sprite[:bh, :bw] = _sprite(digit_img, bh, bw, rng)
    # 7..14 % of the short side per frame: a 32 px clip moves 2-4 px a frame, an 80 px one 6-11 px.
    speed = side * rng.uniform(0.07, 0.14)
    dy, dx = direction_vector(direction)
    y0, x0 = rng.uniform(0, h), rng.uniform(0, w)  # uniform start: every frame's position is uniform too
    alpha = np.stack(
        [
            np.roll(sprite, (round(y0 + t * speed * dy) % h, round(x0 + t * speed * dx) % w), axis=(0, 1))
            for t in range(frames)
        ]
    )  # (T, H, W)
    fg, bg = _tints(rng)
    return _compose(alpha, fg, bg, rng.uniform(0.0, 0.03), rng)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = _FPS) -> None:
    """Write uint8 ``[T, H, W, 3]`` frames as H.264 (yuv420p, so H and W must be even) in an mp4."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even sides, got {h}x{w}")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Same frames -> same file: one thread, and no macroblock-tree rate control, whose x264 build here gives
        # slightly different bitstreams from run to run for the same input. x264's default quality (crf 23)
        # mostly drops the pixel noise and keeps the digit: files are ~35 % smaller than at crf 18.
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "23", "preset": "medium", "x264-params": "mbtree=0"}
        for t, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = t
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _rng(seed: int, kind: str, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _KIND_IDS[kind], split, index]))


def _make_image(out: Path, split: int, i: int, seed: int, scans: np.ndarray, pools: list) -> dict:
    rng = _rng(seed, "images", split, i)
    digit = i % NUM_DIGITS  # balanced classes
    pool = pools[split][digit]
    scan = int(pool[(i // NUM_DIGITS) % len(pool)])  # walk the split's scans of this digit in shuffled order
    h, w = _sample_size(rng, *_IMAGE_SIDES, even=False)
    rel = f"images/{SPLITS[split]}/{i:06d}.png"
    buf = io.BytesIO()
    Image.fromarray(render_digit_image(scans[scan], (h, w), rng)).save(buf, format="PNG")
    (out / rel).write_bytes(buf.getvalue())
    return {
        "path": rel,
        "label": digit,
        "kind": "image",
        "width": w,
        "height": h,
        "frames": 1,
        "fps": 0,
        "digit": digit,
        "scan": scan,
    }


def _make_video(out: Path, split: int, i: int, seed: int, scans: np.ndarray, labels: np.ndarray, pools: list) -> dict:
    rng = _rng(seed, "videos", split, i)
    d = i % len(DIRECTIONS)
    pool = np.concatenate(pools[split])
    scan = int(pool[rng.integers(len(pool))])  # random digit: it carries no label information
    h, w = _sample_size(rng, *_CLIP_SIDES, even=True)
    t = int(rng.integers(_CLIP_FRAMES[0], _CLIP_FRAMES[1] + 1))
    rel = f"videos/{SPLITS[split]}/{i:06d}.mp4"
    write_mp4(render_motion_clip(scans[scan], DIRECTIONS[d], (h, w), t, rng), out / rel, _FPS)
    return {
        "path": rel,
        "label": DIRECTIONS[d],
        "kind": "video",
        "width": w,
        "height": h,
        "frames": t,
        "fps": _FPS,
        "direction": DIRECTIONS[d],
        "digit": int(labels[scan]),
        "scan": scan,
    }


def _write_list(path: Path, samples: Sequence[dict]) -> None:
    path.write_text("".join(f"{s['path']} {s['label']}\n" for s in samples))


def _write_shards(out: Path, name: str, samples: Sequence[dict]) -> list[str]:
    from mmvit.data.shards import ShardSample, write_samples

    (out / "shards").mkdir(exist_ok=True)

    def records():
        for s in samples:
            key = Path(s["path"]).with_suffix("").as_posix().replace("/", "_")  # no dots: webdataset splits on them
            yield ShardSample(key=key, ext="png" if s["kind"] == "image" else "mp4", data=(out / s["path"]).read_bytes(),
                              label=s["label"], sidecar={k: v for k, v in s.items() if k != "path"})

    # mtime fixed so the tar files, like the samples, are the same for the same seed.
    write_samples(str(out / "shards" / f"{name}-%06d.tar"), records(), maxcount=_SHARD_MAXCOUNT, mtime=0)
    return sorted(p.relative_to(out).as_posix() for p in (out / "shards").glob(f"{name}-*.tar"))


def _normalise_counts(counts: dict[str, Sequence[int]] | None) -> dict[str, list[int]]:
    counts = DEFAULT_COUNTS if counts is None else counts
    unknown = set(counts) - set(_KIND_IDS)
    if unknown:
        raise KeyError(f"unknown kind(s) {sorted(unknown)}; valid: {sorted(_KIND_IDS)}")
    norm = {k: [int(c) for c in counts.get(k, (0, 0, 0))] for k in _KIND_IDS}
    for k, c in norm.items():
        if len(c) != len(SPLITS) or min(c) < 0:
            raise ValueError(f"{k}: need {len(SPLITS)} non-negative counts (train, val, test), got {c}")
    return norm


def current_manifest(out: str | Path, seed: int, counts: dict | None = None, shards: bool = True) -> dict | None:
    """The manifest under ``out`` if it was built with these settings and its lists are present, else None."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    wanted = {"format": FORMAT_VERSION, "seed": seed, "counts": _normalise_counts(counts), "shards": shards}
    if any(manifest.get(k) != v for k, v in wanted.items()):
        return None
    if not all((out / f"{s}_{k}.txt").is_file() for s in SPLITS for k in ("images", "videos")):
        return None
    return manifest


def build(out: str | Path, seed: int = 0, counts: dict | None = None, *, shards: bool = True) -> dict:
    """Generate the demo dataset under ``out`` (replacing an earlier one) and return its manifest.

    Args:
        out: data root; list paths are relative to it.
        seed: the whole dataset is a function of it.
        counts: ``{"images": (train, val, test), "videos": (train, val, test)}``; default ``DEFAULT_COUNTS``.
        shards: also write webdataset shards.
    """
    out, counts, start = Path(out), _normalise_counts(counts), time.perf_counter()
    # Remove only what this function writes; the manifest first, so a half-built root is never "current".
    for name in ["manifest.json", *(f"{s}{x}.txt" for s in SPLITS for x in ("", "_images", "_videos"))]:  # (and the
        # mixed lists of format 3)
        (out / name).unlink(missing_ok=True)
    for name in ("images", "videos", "shards"):
        shutil.rmtree(out / name, ignore_errors=True)

    scans, labels = load_digit_scans()
    parts = split_scans(labels, seed)
    order_rng = np.random.default_rng(np.random.SeedSequence([seed, 98]))
    # pools[split][digit]: that split's scans of one digit, shuffled.
    pools = [[order_rng.permutation(p[labels[p] == d]) for d in range(NUM_DIGITS)] for p in parts]

    manifest: dict = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "shards": shards,
        "tasks": {t: {"classes": list(c), "kind": "image" if t == "digits" else "video"} for t, c in TASKS.items()},
        "splits": {},
    }
    for si, split in enumerate(SPLITS):
        for kind in ("images", "videos"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)
        images = [_make_image(out, si, i, seed, scans, pools) for i in range(counts["images"][si])]
        videos = [_make_video(out, si, i, seed, scans, labels, pools) for i in range(counts["videos"][si])]
        # Shuffled once here, so that a streaming reader with a small buffer still sees mixed labels.
        images = [images[j] for j in order_rng.permutation(len(images))]
        videos = [videos[j] for j in order_rng.permutation(len(videos))]
        _write_list(out / f"{split}_images.txt", images)
        _write_list(out / f"{split}_videos.txt", videos)
        manifest["splits"][split] = {
            "images": len(images),
            "videos": len(videos),
            "scans": len(parts[si]),
            "per_class": {"digits": [sum(s["label"] == d for s in images) for d in range(NUM_DIGITS)],
                          "motion": [sum(s["label"] == d for s in videos) for d in DIRECTIONS]},
            "lists": [f"{split}_images.txt", f"{split}_videos.txt"],
            "shards": ((_write_shards(out, f"{split}_images", images) + _write_shards(out, f"{split}_videos", videos))
                       if shards else []),
        }
    manifest["build_seconds"] = round(time.perf_counter() - start, 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest

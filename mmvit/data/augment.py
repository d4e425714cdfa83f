"""Crops, flips, resizing and normalization, identical across the frames of a clip.

Training: a random resized crop (Inception style) whose aspect ratio is drawn around the example's *native*
aspect ratio (``native * exp(U(log r0, log r1))``), so that a native-resolution model still sees the aspect
ratios the data really has, then a horizontal flip. Evaluation: no randomness; the full frame at its native
aspect ratio, or one of ``n`` square crops of the short side spread along the long side (PySlowFast's
3-crop testing). The crop is then resized to the size chosen by :mod:`mmvit.data.resolution` and
normalized. Parameters are drawn once per example, so every frame of a clip gets the same crop and flip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmvit.typed import num

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


@dataclasses.dataclass
class AugmentConfig:
    """The ``augment:`` entry of the data config (training only; evaluation never augments).

    Attributes:
        crop: random resized crop on/off.
        crop_scale: range of the crop's area as a fraction of the frame.
        crop_ratio: range of the crop's aspect ratio relative to the native one.
        flip: probability of a horizontal flip.
    """

    crop: bool = True
    crop_scale: tuple[float, float] = num((0.35, 1.0), gt=0.0, le=1.0)
    crop_ratio: tuple[float, float] = num((3 / 4, 4 / 3), gt=0.0)
    flip: float = num(0.5, ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"data.augment.{name} must be (lo, hi) with lo <= hi, got {getattr(self, name)}")


def random_resized_crop(h: int, w: int, scale: Sequence[float], ratio: Sequence[float],
                        rng: np.random.Generator) -> Box:
    """A crop of area ``U(scale) * h * w`` and aspect ``native * exp(U(log ratio))``; full frame if none fits."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = (w / h) * math.exp(rng.uniform(*log_r))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    return 0, 0, h, w


def view_box(h: int, w: int, spatial: int | None, num_spatial: int) -> Box:
    """Evaluation crop: ``spatial=None`` is the full frame; else square crop ``spatial`` of ``num_spatial``
    (side = short side), spread evenly along the long side (1 crop: centre; 3: start, centre, end)."""
    if spatial is None:
        return 0, 0, h, w
    side = min(h, w)
    room = max(h, w) - side
    off = room // 2 if num_spatial == 1 else round(spatial * room / (num_spatial - 1))
    return (off, 0, side, side) if h > w else (0, off, side, side)


def scale_box(box: Box, planned_hw: tuple[int, int], actual_hw: tuple[int, int]) -> Box:
    """Move a box planned on the probed size onto the decoded size (they differ only if metadata lied)."""
    if tuple(planned_hw) == tuple(actual_hw):
        return box
    sy, sx = actual_hw[0] / planned_hw[0], actual_hw[1] / planned_hw[1]
    top, left, ch, cw = box
    top, left = int(top * sy), int(left * sx)
    ch = max(1, min(actual_hw[0] - top, round(ch * sy)))
    cw = max(1, min(actual_hw[1] - left, round(cw * sx)))
    return top, left, ch, cw


def to_sample(frames: np.ndarray, box: Box, flip: bool, size: tuple[int, int], mean: Sequence[float],
              std: Sequence[float], video: bool) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> crop -> flip -> resize to ``size`` -> normalize.

    Returns a float ``[C, T, h, w]`` tensor for a video and ``[C, h, w]`` for an image (``T`` = 1).
    """
    top, left, ch, cw = box
    x = frames[:, top:top + ch, left:left + cw]
    if flip:
        x = x[:, :, ::-1]
    x = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)  # [T, 3, ch, cw] (astype copies)
    if (ch, cw) != tuple(size):
        # Antialiased bilinear: downscaling by 4x or more is common with sampled resolutions.
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
    x = (x - m) / s
    x = x.permute(1, 0, 2, 3).contiguous()  # [C, T, h, w]
    return x if video else x[:, 0]

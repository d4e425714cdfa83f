"""Which frames of a video make a clip: TSN-style uniform segments or dense clips (mmaction2, PySlowFast).

- ``uniform`` (TSN, Wang et al. 2016): the video is cut into ``frames`` equal segments and one frame is
  taken from each, at a random offset in training and at the segment centre in evaluation.
- ``clip``: ``frames`` frames, ``interval`` apart, from a random start in training and a centred start in
  evaluation.

With several temporal views in evaluation, view ``t`` of ``K`` shifts the offset inside each segment to
``(t + 0.5) / K`` (uniform) or places the clip start evenly between the first and last possible start
(clip), as PySlowFast spreads its test clips. A video too short for the clip repeats its last frame, and
the number of repeated positions is returned so that it can go into the sample's metadata.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["uniform", "clip"]


def sample_frames(num_frames: int, frames: int, *, sampling: Sampling = "uniform", interval: int = 1,
                  train: bool = False, rng: np.random.Generator | None = None, view: int = 0,
                  num_views: int = 1) -> tuple[list[int], int]:
    """Frame indices for one clip and how many of them repeat the last frame because the video is short.

    Args:
        num_frames: frames in the video (>= 1).
        frames: frames in the clip.
        sampling: ``uniform`` or ``clip``.
        interval: distance between clip frames (``clip`` only).
        train: random offsets (needs ``rng``) instead of centred, deterministic ones.
        view, num_views: temporal view ``view`` of ``num_views`` (evaluation).
    """
    if num_frames < 1 or frames < 1 or interval < 1:
        raise ValueError(f"need num_frames, frames, interval >= 1, got {num_frames}, {frames}, {interval}")
    if train and rng is None:
        raise ValueError("training frame sampling needs an rng")
    if sampling == "uniform":
        if num_frames < frames:
            idx = list(range(num_frames)) + [num_frames - 1] * (frames - num_frames)
            return idx, frames - num_frames
        seg = num_frames / frames
        if train:
            offsets = rng.random(frames)
        else:
            offsets = np.full(frames, (view + 0.5) / num_views)
        idx = np.floor((np.arange(frames) + offsets) * seg).astype(np.int64)
        return [int(i) for i in np.clip(idx, 0, num_frames - 1)], 0
    if sampling == "clip":
        span = (frames - 1) * interval + 1
        room = num_frames - span  # possible starts: 0..room
        if room < 0:
            start = 0
        elif train:
            start = int(rng.integers(0, room + 1))
        elif num_views == 1:
            start = room // 2
        else:
            start = round(view * room / (num_views - 1))
        raw = [start + k * interval for k in range(frames)]
        repeated = sum(1 for i in raw if i > num_frames - 1)
        return [min(i, num_frames - 1) for i in raw], repeated
    raise ValueError(f"frame sampling must be uniform or clip, got {sampling!r}")

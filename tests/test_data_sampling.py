"""Pure sampling functions: fit_to_budget against brute force, resolution distributions, frames, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmvit.data import ResolutionConfig, fit_to_budget, sample_frames
from mmvit.data.augment import random_resized_crop, view_box
from mmvit.data.config import make_stage, resolve_data_config


def brute_force(h: int, w: int, ph: int, pw: int, budget: int) -> tuple[int, int]:
    """Independent reference: try every grid (nh, nw) within the budget and keep the one with the largest
    area whose aspect ratio is the input's up to rounding each side to whole patches."""
    best = (0, (ph, pw))
    gh, gw = h / ph, w / pw  # extent in patch units
    for nh in range(1, budget + 1):
        for nw in range(1, budget // nh + 1):
            # (nh, nw) is a rounding of the scaled size: the long side sets the scale, the short side is its
            # rounded counterpart, clamped to at least one patch.
            if gh >= gw:
                ok = nw == max(1, math.floor(nh * gw / gh + 0.5))
            else:
                ok = nh == max(1, math.floor(nw * gh / gw + 0.5))
            if ok and nh * nw > best[0]:
                best = (nh * nw, (nh * ph, nw * pw))
    return best[1]


def test_fit_to_budget_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 2000, 2))
        if rng.random() < 0.2:  # extreme aspect ratios and tiny inputs
            h, w = int(rng.integers(1, 8)), int(rng.integers(100, 3000))
        ph = int(rng.choice([4, 8, 14, 16, 32]))
        pw = ph if rng.random() < 0.8 else int(rng.choice([8, 16]))
        budget = int(rng.integers(1, 300))
        assert fit_to_budget(h, w, (ph, pw), budget) == brute_force(h, w, ph, pw, budget), (h, w, ph, pw, budget)


def test_fit_to_budget_properties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(16, 1500, 2))
        p = int(rng.choice([8, 16, 32]))
        budget = int(rng.integers(1, 1024))
        h2, w2 = fit_to_budget(h, w, p, budget)
        nh, nw = h2 // p, w2 // p
        assert h2 % p == 0 and w2 % p == 0 and 1 <= nh * nw <= budget
        # Aspect preserved up to rounding the short side to whole patches.
        if h >= w:
            assert abs(nw - nh * w / h) <= 0.5 + 1e-9 or nw == 1
        else:
            assert abs(nh - nw * h / w) <= 0.5 + 1e-9 or nh == 1
    assert fit_to_budget(3, 5, 16, 256)[0] >= 16  # tiny inputs are scaled up
    assert fit_to_budget(224, 224, 16, 196) == (224, 224)
    assert fit_to_budget(4000, 3000, 16, 256) == (16 * 18, 16 * 14)  # 18 x 14 = 252 <= 256, 19 x 14 > 256
    assert fit_to_budget(100, 100, 16, 0) == (16, 16)  # the budget is at least one patch


def test_resolution_distributions():
    rng = np.random.default_rng(0)
    uni = ResolutionConfig.parse({"type": "uniform", "min": 64, "max": 256})
    x = np.array([uni.draw(rng) for _ in range(4000)])
    assert x.min() >= 64 and x.max() <= 256 and abs(x.mean() - 160) < 5
    tn = ResolutionConfig.parse({"type": "truncnorm", "min": 64, "max": 256})
    y = np.array([tn.draw(rng) for _ in range(4000)])
    assert y.min() >= 64 and y.max() <= 256 and y.mean() < 140  # biased toward small sizes
    assert np.mean(y < 128) > np.mean(x < 128)
    fixed = ResolutionConfig.parse({"type": "fixed", "values": [96, 224]})
    assert {fixed.draw(rng) for _ in range(100)} == {96.0, 224.0}
    assert uni.budget(224, (16, 16)) == 196  # area-preserving: (224 / 16)^2
    assert ResolutionConfig.parse({"type": "fixed", "values": [300], "mode": "tokens"}).budget(300, 16) == 300
    with pytest.raises(KeyError, match="did you mean 'values'"):
        ResolutionConfig.parse({"type": "fixed", "valuse": [1]})
    with pytest.raises(ValueError):
        ResolutionConfig.parse({"type": "uniform", "values": [1]})


def test_uniform_frames_train_and_eval():
    idx, rep = sample_frames(100, 8, sampling="uniform")
    assert rep == 0 and idx == [6, 18, 31, 43, 56, 68, 81, 93]  # segment centres
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx, _ = sample_frames(100, 8, sampling="uniform", train=True, rng=rng)
        assert all(math.floor(12.5 * k) <= i < 12.5 * (k + 1) for k, i in enumerate(idx))
    views = [sample_frames(100, 4, sampling="uniform", view=v, num_views=2)[0] for v in range(2)]
    assert views[0] != views[1] and all(a < b for a, b in zip(*views))


def test_clip_frames_train_eval_and_short_videos():
    idx, rep = sample_frames(100, 4, sampling="clip", interval=8)
    assert rep == 0 and idx == [37, 45, 53, 61]  # centred: span 25, start (100 - 25) // 2
    rng = np.random.default_rng(0)
    starts = {sample_frames(100, 4, sampling="clip", interval=8, train=True, rng=rng)[0][0] for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 75 and len(starts) > 20
    assert [sample_frames(100, 4, sampling="clip", interval=8, view=v, num_views=3)[0][0] for v in range(3)] == \
        [0, 38, 75]  # evenly spread starts
    idx, rep = sample_frames(5, 4, sampling="clip", interval=2)  # needs 7 frames: repeats the last
    assert idx == [0, 2, 4, 4] and rep == 1
    idx, rep = sample_frames(3, 8, sampling="uniform")
    assert idx == [0, 1, 2, 2, 2, 2, 2, 2] and rep == 5


def test_random_resized_crop_keeps_native_aspect_range():
    rng = np.random.default_rng(0)
    for h, w in [(100, 400), (400, 100), (300, 300)]:
        native = w / h
        for _ in range(200):
            top, left, ch, cw = random_resized_crop(h, w, (0.3, 1.0), (0.75, 4 / 3), rng)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
            if (ch, cw) != (h, w):
                ratio = (cw / ch) / native
                assert 0.7 < ratio < 1.4


def test_view_boxes():
    assert view_box(100, 200, None, 3) == (0, 0, 100, 200)
    assert [view_box(100, 200, s, 3) for s in range(3)] == [(0, 0, 100, 100), (0, 50, 100, 100), (0, 100, 100, 100)]
    assert view_box(200, 100, 0, 1) == (50, 0, 100, 100)


def test_config_errors_name_the_nearest_key():
    with pytest.raises(KeyError, match="did you mean 'seq_len'"):
        resolve_data_config({"sources": [{"type": "image_folder", "root": "."}], "seq_lne": 3}, "train")
    with pytest.raises(KeyError, match="did you mean 'frames'"):
        make_stage(resolve_data_config({"sources": [{"type": "x"}]}, "train"), {"frame": 4})
    with pytest.raises(ValueError, match="no sources for split 'val'"):
        resolve_data_config({"splits": {"train": {"sources": [{"type": "x"}]}}}, "val")
    cfg = resolve_data_config({"seq_len": 64, "splits": {"val": {"sources": [{"type": "x"}], "seq_len": 32}}}, "val")
    assert cfg.seq_len == 32
    cfg = resolve_data_config({"sources": [{"type": "x"}], "tubelet": 2, "frames": 8}, "train")
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        make_stage(cfg, {"frames": 3})
    with pytest.raises(ValueError, match="either resolution or token_budget"):
        make_stage(cfg, {"resolution": 64, "token_budget": 100})
    assert make_stage(cfg, {"patch_size": [1, 8, 8], "frames": 3}).patch_size == (1, 8, 8)

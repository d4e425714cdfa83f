"""Masks for MAE, VideoMAE and JEPA: ratios, tubes, block shapes, determinism, degenerate grids, config."""

import math

import numpy as np
import pytest
import torch

from mmvit.pretrain.masking import (MaskConfig, block_shape, mask_rng, multiblock_mask, plan_mask, random_mask,
                                    sample_blocks, tube_mask)


def _masked(visible: torch.Tensor, grid) -> np.ndarray:
    """Boolean ``[nt, nh, nw]``: True where masked."""
    nt, nh, nw = grid
    m = np.ones(nt * nh * nw, dtype=bool)
    m[visible.numpy()] = False
    return m.reshape(nt, nh, nw)


def _check_proper(visible: torch.Tensor, n: int) -> None:
    assert visible.dtype == torch.long and visible.dim() == 1
    assert 1 <= len(visible) <= n - 1
    assert bool((visible[1:] > visible[:-1]).all()) and int(visible[0]) >= 0 and int(visible[-1]) < n


@pytest.mark.parametrize("grid", [(1, 14, 14), (1, 5, 7), (3, 4, 6), (8, 2, 3)])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
def test_random_mask_ratio_within_one_token(grid, ratio):
    rng = np.random.default_rng(0)
    n = math.prod(grid)
    for _ in range(5):
        vis = random_mask(grid, ratio, rng)
        _check_proper(vis, n)
        assert abs((n - len(vis)) - ratio * n) <= 1


@pytest.mark.parametrize("grid", [(4, 5, 6), (2, 3, 3), (8, 1, 2)])
def test_tube_mask_identical_across_time(grid):
    rng = np.random.default_rng(1)
    nt, nh, nw = grid
    for ratio in (0.5, 0.9):
        vis = tube_mask(grid, ratio, rng)
        _check_proper(vis, math.prod(grid))
        m = _masked(vis, grid).reshape(nt, -1)
        assert (m == m[:1]).all()                                # the same spatial mask at every time step
        assert abs(m[0].sum() - ratio * nh * nw) <= 1            # ratio within one token per frame


def test_tube_masks_differ_between_draws_but_not_within_a_clip():
    rng = np.random.default_rng(2)
    draws = [_masked(tube_mask((4, 6, 6), 0.75, rng), (4, 6, 6))[0] for _ in range(4)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])


def test_block_shapes_have_the_asked_scale_and_aspect():
    """Unclipped blocks: h and w are the rounded sqrt(s*A*a), sqrt(s*A/a) for some s, a in the ranges."""
    rng = np.random.default_rng(3)
    nh, nw = 64, 48
    area = nh * nw
    for scale, aspect in [((0.15, 0.2), (0.75, 1.5)), ((0.15, 0.15), (0.75, 1.5)), ((0.7, 0.7), (1.0, 1.0))]:
        for _ in range(30):
            blocks = sample_blocks(nh, nw, rng, 4, scale, aspect)
            assert len({(h, w) for _, _, h, w in blocks}) == 1   # one size per example
            for top, left, h, w in blocks:
                assert 0 <= top <= nh - h and 0 <= left <= nw - w
                # Rounding moves h and w by at most 0.5 each.
                lo_area, hi_area = (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)
                assert lo_area <= scale[1] * area and hi_area >= scale[0] * area, (h, w, scale)
                lo_ar, hi_ar = (h - 0.5) / (w + 0.5), (h + 0.5) / (w - 0.5)
                assert lo_ar <= aspect[1] and hi_ar >= aspect[0], (h, w, aspect)
    # The formula itself, at a point: scale 0.25 of 64x48 with aspect 1 is a 28x28 block (sqrt(768) = 27.7).
    assert block_shape(64, 48, 0.25, 1.0) == (28, 28)
    assert block_shape(4, 4, 0.9, 3.0) == (4, 2)                 # clipped to the grid


def test_multiblock_is_the_union_of_its_blocks_extended_over_time():
    grid = (3, 16, 12)
    vis = multiblock_mask(grid, np.random.default_rng(4), num_blocks=8, scale=(0.15, 0.15))
    spatial = np.zeros((16, 12), dtype=bool)
    for top, left, h, w in sample_blocks(16, 12, np.random.default_rng(4), 8, (0.15, 0.15), (0.75, 1.5)):
        spatial[top:top + h, left:left + w] = True
    m = _masked(vis, grid)
    assert (m == spatial[None]).all()
    _check_proper(vis, math.prod(grid))


def test_masks_are_deterministic_under_a_seeded_generator():
    cfg_mae, cfg_jepa = MaskConfig(), MaskConfig(preset="jepa")
    for cfg in (cfg_mae, cfg_jepa):
        for grid, kind in [((1, 12, 9), "image"), ((4, 8, 8), "video")]:
            a = plan_mask(grid, kind, cfg, mask_rng(7, 3, 11))
            b = plan_mask(grid, kind, cfg, mask_rng(7, 3, 11))
            c = plan_mask(grid, kind, cfg, mask_rng(7, 3, 12))
            assert torch.equal(a, b)
            assert not torch.equal(a, c)


@pytest.mark.parametrize("grid", [(1, 1, 2), (1, 2, 1), (2, 1, 1), (1, 2, 2), (2, 1, 2), (3, 1, 1)])
def test_tiny_examples_keep_one_visible_and_one_masked(grid):
    n = math.prod(grid)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        _check_proper(random_mask(grid, 0.9, rng), n)
        _check_proper(random_mask(grid, 0.01, rng), n)
        _check_proper(tube_mask(grid, 0.9, rng), n)
        # Long-range blocks (scale 0.7) cover a tiny grid whole: the fallback makes one token visible.
        _check_proper(multiblock_mask(grid, rng, num_blocks=2, scale=0.7, max_tries=3), n)
        for cfg in (MaskConfig(), MaskConfig(preset="jepa")):
            for kind in ("image", "video"):
                _check_proper(plan_mask(grid, kind, cfg, rng), n)


def test_one_token_examples_raise():
    rng = np.random.default_rng(0)
    for fn in (lambda: random_mask((1, 1, 1), 0.75, rng), lambda: tube_mask((1, 1, 1), 0.9, rng),
               lambda: multiblock_mask((1, 1, 1), rng), lambda: plan_mask((1, 1, 1), "image", MaskConfig(), rng)):
        with pytest.raises(ValueError, match="cannot be split"):
            fn()


def test_mask_config_presets_and_overrides():
    cfg = MaskConfig.from_dict({})
    assert (cfg.image.type, cfg.image.ratio, cfg.video.type, cfg.video.ratio) == ("random", 0.75, "tube", 0.9)
    jepa = MaskConfig.from_dict({"preset": "jepa"})
    assert jepa.image.type == "multiblock" and [b.num_blocks for b in jepa.image.blocks] == [4]
    assert jepa.image.blocks[0].scale == (0.15, 0.2) and jepa.image.blocks[0].aspect == (0.75, 1.5)
    assert [(b.num_blocks, b.scale) for b in jepa.video.blocks] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    # An override merges over the preset; another type replaces the preset's section.
    over = MaskConfig.from_dict({"video": {"ratio": 0.8}, "image": {"type": "multiblock"}})
    assert (over.video.type, over.video.ratio) == ("tube", 0.8)
    assert over.image.type == "multiblock" and over.image.blocks[0].num_blocks == 4
    with pytest.raises(KeyError, match="ratio"):
        MaskConfig.from_dict({"image": {"ratoi": 0.5}})
    with pytest.raises(KeyError, match="preset"):
        MaskConfig.from_dict({"prest": "mae"})
    with pytest.raises(ValueError):
        MaskConfig.from_dict({"image": {"ratio": 1.0}})
    with pytest.raises(ValueError):
        MaskConfig.from_dict({"video": {"type": "multiblock", "blocks": [{"scale": 1.5}]}})


def test_rate_specs_follow_token_drop():
    grid = (1, 20, 20)
    n = 400
    const = MaskConfig.from_dict({"image": {"ratio": {"type": "constant", "rate": 0.6}}})
    vis = plan_mask(grid, "image", const, np.random.default_rng(0))
    assert n - len(vis) == 240
    beta = MaskConfig.from_dict({"image": {"ratio": {"type": "beta", "mean": 0.75}}})
    counts = [n - len(plan_mask(grid, "image", beta, np.random.default_rng(s))) for s in range(40)]
    assert len(set(counts)) > 10                      # drawn per example
    assert abs(np.mean(counts) / n - 0.75) < 0.1      # around the mean of the Beta
    res = MaskConfig.from_dict({"image": {"ratio": {"type": "resolution", "min": 0.5, "max": 0.9,
                                                    "min_tokens": 16, "max_tokens": 400, "std": 0.0}}})
    assert 400 - len(plan_mask((1, 20, 20), "image", res, np.random.default_rng(0))) == 360
    assert 16 - len(plan_mask((1, 4, 4), "image", res, np.random.default_rng(0))) == 8


def test_mask_config_pickles_for_loader_workers():
    import pickle

    cfg = MaskConfig.from_dict({"image": {"ratio": {"type": "beta", "mean": 0.75}}, "preset": "mae"})
    again = pickle.loads(pickle.dumps(cfg))
    a = plan_mask((1, 9, 9), "image", cfg, mask_rng(0, 1))
    assert torch.equal(a, plan_mask((1, 9, 9), "image", again, mask_rng(0, 1)))

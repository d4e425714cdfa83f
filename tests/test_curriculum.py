"""Curricula are pure functions of the step: multigrid, stepwise, DeepSpeed's difficulty formulas, none."""

import math

import pytest

from mmvit.registry import CURRICULA
from mmvit.train.curriculum import (LONG_CYCLE, build_curriculum, describe, mean_square_side, plan, relative_cost,
                                    scale_resolution, segments)

FULL = {"resolution": {"type": "uniform", "min": 64, "max": 256}, "frames": 16}


def test_registry_lists_every_curriculum():
    assert {"none", "stepwise", "multigrid", "fixed_linear", "fixed_root", "fixed_discrete"} <= set(CURRICULA.names())
    with pytest.raises(KeyError, match="did you mean 'multigrid'"):
        build_curriculum({"type": "multigird"}, total_steps=10, data_cfg=FULL)
    with pytest.raises(KeyError, match="did you mean 'cycles'"):
        build_curriculum({"type": "multigrid", "cycels": 2}, total_steps=10, data_cfg=FULL)


def test_none_is_the_full_shape():
    c = build_curriculum(None, total_steps=10, data_cfg=FULL)
    assert c(0) == c(9) == {**FULL, "name": "full", "cost": 1.0}


def test_multigrid_long_cycle_matches_pyslowfast_factors():
    c = build_curriculum({"type": "multigrid", "cycles": 2, "final_fraction": 0.2}, total_steps=100, data_cfg=FULL)
    # 80 steps of cycles: 2 cycles x 4 phases of 10 steps, then 20 steps at full shape.
    for phase, (t, s) in enumerate(list(LONG_CYCLE) * 2):
        stage = c(phase * 10 + 5)
        assert stage["frames"] == round(16 * t)
        assert stage["resolution"] == scale_resolution(FULL["resolution"], s)
        assert stage["cost"] == pytest.approx(t * s * s, rel=2e-3)  # PySlowFast's batch factor 1 / (t s^2)
    assert [c(s)["name"] for s in (0, 9, 10)] == ["T1/4 S1/sqrt2", "T1/4 S1/sqrt2", "T1/2 S1/sqrt2"]
    assert all(c(s)["name"] == "full" and c(s)["cost"] == 1.0 for s in range(80, 100))
    assert c(5) == c(5)  # pure
    assert len(segments(c, 100)) == 9


def test_multigrid_short_cycle_and_token_budget():
    c = build_curriculum({"type": "multigrid", "short_cycle": True, "final_fraction": 0.5}, total_steps=40,
                         data_cfg=FULL)
    # Inside the first phase (T/4, S/sqrt2): sides 1/2, 1/sqrt2, then the phase's own 1/sqrt2.
    sides = [c(s)["resolution"]["max"] for s in range(3)]
    assert sides == [128, 181, 181]
    assert c(39)["name"] == "full"
    b = build_curriculum({"type": "multigrid", "target": "token_budget", "full": {"token_budget": 256}},
                         total_steps=8, data_cfg=FULL)
    assert [b(s)["token_budget"] for s in range(0, 8, 2)] == [32, 64, 128, 256]
    assert "resolution" not in b(0)  # the loader takes one of the two
    with pytest.raises(KeyError, match="full.token_budget"):
        build_curriculum({"type": "multigrid", "target": "token_budget"}, total_steps=8, data_cfg=FULL)


def test_deepspeed_difficulty_formulas_applied_to_resolution():
    T, lo, hi, step = 100, 64, 256, 32
    lin = build_curriculum({"type": "fixed_linear", "min_difficulty": lo, "max_difficulty": hi,
                            "difficulty_step": step}, total_steps=T, data_cfg=FULL)
    root = build_curriculum({"type": "fixed_root", "min_difficulty": lo, "max_difficulty": hi, "difficulty_step": step,
                             "root_degree": 2, "total_curriculum_step": 50}, total_steps=T, data_cfg=FULL)
    for t in range(T):
        d_lin = min(hi, math.floor(((t / T) * (hi - lo) + lo) / step) * step)
        d_root = min(hi, math.floor((min(1, t / 50) ** 0.5 * (hi - lo) + lo) / step) * step)
        assert lin(t)["resolution"]["max"] == d_lin
        assert root(t)["resolution"]["max"] == d_root
        assert lin(t)["resolution"]["min"] == round(64 * d_lin / 256)  # the distribution keeps its shape
    disc = build_curriculum({"type": "fixed_discrete", "difficulty": [64, 128, 256], "max_step": [10, 30]},
                            total_steps=T, data_cfg=FULL)
    assert [disc(t)["resolution"]["max"] for t in (0, 10, 11, 30, 31, 99)] == [64, 64, 128, 128, 256, 256]
    frames = build_curriculum({"type": "fixed_discrete", "difficulty": [4, 16], "max_step": [5], "target": "frames"},
                              total_steps=T, data_cfg=FULL)
    assert (frames(5)["frames"], frames(6)["frames"]) == (4, 16)
    with pytest.raises(ValueError, match="max_step"):
        build_curriculum({"type": "fixed_discrete", "difficulty": [1, 2], "max_step": [1, 2]}, total_steps=T,
                         data_cfg=FULL)


def test_stepwise_stages_and_validation():
    cfg = {"type": "stepwise", "stages": [{"until": 0.25, "resolution": {"type": "fixed", "values": [64]}, "frames": 4},
                                          {"until": 0.5, "patch_size": 32}, {"name": "last"}]}
    c = build_curriculum(cfg, total_steps=8, data_cfg={**FULL, "patch_size": 16})
    assert [c(s)["name"] for s in range(8)] == ["stage0"] * 2 + ["stage1"] * 2 + ["last"] * 4
    assert c(0)["frames"] == 4 and c(2)["frames"] == 16 and c(2)["patch_size"] == 32
    assert c(2)["cost"] == pytest.approx(0.25)  # 4x fewer patches at patch size 32
    assert c(0)["cost"] == pytest.approx(64 ** 2 / mean_square_side(FULL["resolution"]) / 4)
    with pytest.raises(KeyError, match="unknown keys"):
        build_curriculum({"type": "stepwise", "stages": [{"resolutoin": 3}]}, total_steps=8)
    with pytest.raises(ValueError, match="until"):
        build_curriculum({"type": "stepwise", "stages": [{"frames": 2}, {}]}, total_steps=8)


def test_resolution_helpers():
    half = scale_resolution({"type": "uniform", "min": 64, "max": 256}, 0.5)
    assert half == {"type": "uniform", "min": 32, "max": 128}
    assert scale_resolution({"type": "fixed", "values": [100, 200]}, 0.5)["values"] == [50, 100]
    assert scale_resolution({"type": "uniform", "mode": "tokens", "min": 16, "max": 64}, 0.5)["max"] == 16
    assert scale_resolution(224, 0.5) == {"type": "fixed", "values": [112]}
    assert mean_square_side({"type": "uniform", "min": 0, "max": 3}) == pytest.approx(3.0)
    tn = mean_square_side({"type": "truncnorm", "min": 64, "max": 256})
    assert 64 ** 2 < tn < mean_square_side({"type": "uniform", "min": 64, "max": 256})  # biased to small sizes
    assert relative_cost(FULL, FULL) == 1.0
    assert "examples/step" in describe(build_curriculum({"type": "multigrid"}, total_steps=20, data_cfg=FULL), 20)


def test_plan_summarises_a_short_cycle_in_windows():
    c = build_curriculum({"type": "multigrid", "short_cycle": True}, total_steps=4000, data_cfg=FULL)
    rows = plan(c, 4000, max_rows=100)
    assert len(rows) == 100 and rows[0]["start"] == 0 and rows[-1]["end"] == 4000
    # 1/cost of a window is its mean relative examples per step.
    assert 1 / rows[0]["cost"] == pytest.approx(sum(1 / c(s)["cost"] for s in range(40)) / 40)
    assert rows[-1]["name"] == "full"
    assert plan(c, 12, max_rows=100) == segments(c, 12)

"""Curricula are pure functions of the step: multigrid, stepwise, DeepSpeed's difficulty formulas, none."""

import pytest

from mmvit.data import resolve_data_config
from mmvit.data.resolution import ResolutionConfig
from mmvit.registry import CURRICULA
from mmvit.train.curriculum import LONG_CYCLE, build_curriculum, describe, plan, relative_cost, segments

RES = ResolutionConfig(type="uniform", min=64, max=256)


def data(**kw):
    return resolve_data_config({"sources": [{"type": "synthetic"}], "resolution": RES.to_dict(), "frames": 16,
                                "seq_len": 4096, **kw}, "train")


FULL = data()


def test_registry_lists_every_curriculum():
    assert {"none", "stepwise", "multigrid", "fixed_linear", "fixed_root", "fixed_discrete"} <= set(CURRICULA.names())
    with pytest.raises(KeyError, match="did you mean 'multigrid'"):
        build_curriculum({"type": "multigird"}, total_steps=10, data=FULL)
    with pytest.raises(KeyError, match="did you mean 'cycles'"):
        build_curriculum({"type": "multigrid", "cycels": 2}, total_steps=10, data=FULL)


def test_none_is_the_full_shape():
    c = build_curriculum(None, total_steps=10, data=FULL)
    assert c(0) == c(9) == FULL.full_stage()
    assert c(0).cost == 1.0 and c(0).resolution == RES and c(0).frames == 16


def test_multigrid_long_cycle_matches_pyslowfast_factors():
    c = build_curriculum({"type": "multigrid", "cycles": 2, "final_fraction": 0.2}, total_steps=100, data=FULL)
    # 80 steps of cycles: 2 cycles x 4 phases of 10 steps, then 20 steps at full shape.
    for phase, (t, s) in enumerate(list(LONG_CYCLE) * 2):
        stage = c(phase * 10 + 5)
        assert stage.frames == round(16 * t)
        assert (stage.resolution.min, stage.resolution.max) == (round(64 * s), round(256 * s))
        assert stage.cost == pytest.approx(t * s * s, rel=2e-3)  # PySlowFast's batch factor 1 / (t s^2)
    assert [c(s).name for s in (0, 9, 10)] == ["T1/4 S1/sqrt2", "T1/4 S1/sqrt2", "T1/2 S1/sqrt2"]
    assert all(c(s).name == "full" and c(s).cost == 1.0 for s in range(80, 100))
    assert c(5) == c(5)  # pure
    assert len(segments(c, 100)) == 9


def test_multigrid_short_cycle_and_token_budget():
    c = build_curriculum({"type": "multigrid", "short_cycle": True, "final_fraction": 0.5}, total_steps=40, data=FULL)
    # Inside the first phase (T/4, S/sqrt2): sides 1/2, 1/sqrt2, then the phase's own 1/sqrt2.
    assert [c(s).resolution.max for s in range(3)] == [128, 181, 181]
    assert c(39).name == "full"
    b = build_curriculum({"type": "multigrid", "target": "token_budget", "full": {"token_budget": 256}},
                         total_steps=8, data=FULL)
    assert [b(s).token_budget for s in range(0, 8, 2)] == [32, 64, 128, 256]
    with pytest.raises(KeyError, match="full.token_budget"):
        build_curriculum({"type": "multigrid", "target": "token_budget"}, total_steps=8, data=FULL)


def test_deepspeed_difficulty_formulas_against_deepspeeds_scheduler():
    """The difficulty of every step equals DeepSpeed's own CurriculumScheduler's, applied to the resolution."""
    sched = pytest.importorskip("deepspeed.runtime.data_pipeline.curriculum_scheduler")
    T = 100
    for kind, lo, hi, step, extra in (("fixed_linear", 64, 256, 32, {}), ("fixed_linear", 40, 256, 16, {}),
                                      ("fixed_root", 64, 256, 32, {"root_degree": 2}),
                                      ("fixed_root", 8, 200, 24, {"root_degree": 3})):
        horizon = 50
        ours = build_curriculum({"type": kind, "min_difficulty": lo, "max_difficulty": hi, "difficulty_step": step,
                                 "total_curriculum_step": horizon, **extra}, total_steps=T,
                                data=data(resolution={"type": "uniform", "min": 16, "max": 256}))
        theirs = sched.CurriculumScheduler({
            "min_difficulty": lo, "max_difficulty": hi, "schedule_type": kind,
            "schedule_config": {"total_curriculum_step": horizon, "difficulty_step": step, **extra}})
        for t in range(T):
            assert ours(t).resolution.max == theirs.get_difficulty(t), (kind, t)
            # the distribution keeps its shape: 16..256 scaled so that its largest side is the difficulty
            assert ours(t).resolution.min == max(1, round(16 * ours(t).resolution.max / 256))
    disc = {"difficulty": [64, 128, 256], "max_step": [10, 30]}
    ours = build_curriculum({"type": "fixed_discrete", **disc}, total_steps=T, data=FULL)
    theirs = sched.CurriculumScheduler({"min_difficulty": 64, "max_difficulty": 256, "schedule_type": "fixed_discrete",
                                        "schedule_config": disc})
    assert [ours(t).resolution.max for t in range(T)] == [theirs.get_difficulty(t) for t in range(T)]
    frames = build_curriculum({"type": "fixed_discrete", "difficulty": [4, 16], "max_step": [5], "target": "frames"},
                              total_steps=T, data=FULL)
    assert (frames(5).frames, frames(6).frames) == (4, 16)
    with pytest.raises(ValueError, match="max_step"):
        build_curriculum({"type": "fixed_discrete", "difficulty": [1, 2], "max_step": [1, 2]}, total_steps=T, data=FULL)


def test_stepwise_stages_and_validation():
    cfg = {"type": "stepwise", "stages": [{"until": 0.25, "resolution": {"type": "fixed", "values": [64]}, "frames": 4},
                                          {"until": 0.5, "patch_size": 32}, {"name": "last"}]}
    c = build_curriculum(cfg, total_steps=8, data=FULL, )
    assert [c(s).name for s in range(8)] == ["stage0"] * 2 + ["stage1"] * 2 + ["last"] * 4
    assert c(0).frames == 4 and c(2).frames == 16 and c(2).patch_size == (1, 32, 32)
    assert c(0).cost == pytest.approx(64 ** 2 / ((64 ** 2 + 64 * 256 + 256 ** 2) / 3) / 4)  # E[side^2] of U(64, 256)
    full16 = build_curriculum({**cfg, "full": {"patch_size": 16}}, total_steps=8, data=FULL)
    assert full16(2).cost == pytest.approx(0.25)  # 4x fewer patches at patch size 32 than at 16
    with pytest.raises(KeyError, match="unknown keys"):
        build_curriculum({"type": "stepwise", "stages": [{"resolutoin": 3}]}, total_steps=8, data=FULL)
    with pytest.raises(ValueError, match="until"):
        build_curriculum({"type": "stepwise", "stages": [{"frames": 2}, {}]}, total_steps=8, data=FULL)
    with pytest.raises(ValueError, match="multiple of the tubelet"):  # checked against the data config up front
        build_curriculum({"type": "stepwise", "stages": [{"until": 0.5, "frames": 3}, {}]}, total_steps=8,
                         data=data(tubelet=2))


def test_resolution_helpers():
    half = RES.scaled(0.5)
    assert (half.type, half.min, half.max) == ("uniform", 32, 128)
    assert ResolutionConfig(type="fixed", values=(100, 200)).scaled(0.5).values == (50, 100)
    assert ResolutionConfig(mode="tokens", min=16, max=64).scaled(0.5).max == 16
    assert ResolutionConfig.parse(224).scaled(0.5).values == (112,)
    assert ResolutionConfig(min=1, max=3).mean_cost() == pytest.approx(13 / 3)  # (1 + 3 + 9) / 3
    tn = ResolutionConfig(type="truncnorm", min=64, max=256).mean_cost()
    assert 64 ** 2 < tn < RES.mean_cost()  # biased to small sizes
    assert relative_cost(FULL.full_stage(), FULL.full_stage()) == 1.0
    assert "examples/step" in describe(build_curriculum({"type": "multigrid"}, total_steps=20, data=FULL), 20)


def test_plan_summarises_a_short_cycle_in_windows():
    c = build_curriculum({"type": "multigrid", "short_cycle": True}, total_steps=4000, data=FULL)
    rows = plan(c, 4000, max_rows=100)
    assert len(rows) == 100 and rows[0]["start"] == 0 and rows[-1]["end"] == 4000
    # 1/cost of a window is its mean relative examples per step.
    assert 1 / rows[0]["cost"] == pytest.approx(sum(1 / c(s).cost for s in range(40)) / 40)
    assert rows[-1]["name"] == "full"
    assert plan(c, 12, max_rows=100) == segments(c, 12)

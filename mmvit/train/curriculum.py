"""Coarse-to-fine curricula: pure functions from the global step to a data :class:`~mmvit.data.stage.Stage`.

Multigrid training (Wu et al. 2020, "A Multigrid Method for Efficiently Training Video Models") shows
that training on coarse, cheap shapes first and the full shape last reaches the same accuracy in several
times fewer iterations. With Patch n' Pack (NaViT) the micro-batch keeps a fixed token count, so a coarse
stage simply fits more examples into each step: nothing is rebuilt, only the loader's sampling changes.

A curriculum maps a step to a ``Stage`` (resolution distribution or token budget, frames, patch size) with
a ``name`` and a ``cost``: the expected tokens per example relative to the full shape (examples per step
grow as ``1 / cost``). ``CURRICULA.build({"type": ..., ...}, total_steps=T, full=stage)`` returns a callable
``curriculum(step) -> Stage`` that depends on nothing but its arguments. The full stage is the data
section's own shape (``DataConfig.full_stage``), with the curriculum's ``full:`` keys over it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

from mmvit.data.config import DataConfig
from mmvit.data.resolution import ResolutionConfig
from mmvit.data.stage import Stage, make_stage
from mmvit.packing import as_patch_size
from mmvit.registry import CURRICULA

Curriculum = Callable[[int], Stage]

# PySlowFast's long cycle, (frames, side) factors relative to the full shape, and its short-cycle sides.
LONG_CYCLE = ((0.25, 2 ** -0.5), (0.5, 2 ** -0.5), (0.5, 1.0), (1.0, 1.0))
SHORT_CYCLE = (0.5, 2 ** -0.5)


def relative_cost(stage: Stage, full: Stage) -> float:
    """Expected tokens per example of ``stage`` relative to ``full`` (1.0 at the full shape).

    Token budgets (per example, all frames) compare directly when both stages have one. Otherwise the
    resolution distributions' ``E[side^2]`` (``ResolutionConfig.mean_cost``), times the inverse patch area
    when both stages fix a patch size, times the frame ratio (frames only cost on videos, so on mixed data
    this overstates their saving).
    """
    if stage.token_budget is not None and full.token_budget is not None:
        return stage.token_budget / full.token_budget
    cost = stage.resolution.mean_cost() / full.resolution.mean_cost()
    if stage.patch_size is not None and full.patch_size is not None:
        cost *= (full.patch_size[1] * full.patch_size[2]) / (stage.patch_size[1] * stage.patch_size[2])
    return cost * stage.frames / full.frames


def derive(full: Stage, name: str, **changes) -> Stage:
    """``full`` with ``changes`` (``resolution``, ``token_budget``, ``frames``, ``patch_size``; ``None``
    keeps full's), named and costed. A stage that sets a resolution drops full's token budget."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "resolution" in changes and "token_budget" not in changes:
        changes["token_budget"] = None
    stage = dataclasses.replace(full, **changes, name=name)
    return dataclasses.replace(stage, cost=relative_cost(stage, full))


def _needs(full: Stage, what: str, key: str) -> None:
    if getattr(full, key) is None:
        raise KeyError(f"curriculum[{what!r}] needs full.{key} (the full-shape {key}), in the curriculum "
                       f"config (full: {{{key}: ...}}) or as data.{key}")


_CHANGE_KEYS = ("resolution", "token_budget", "frames", "patch_size")


def _changes(full: Stage, spec: dict) -> dict:
    """A stage entry of a config (``resolution`` as a dict or number) as changes to ``full``."""
    out = dict(spec)
    if out.get("resolution") is not None:
        out["resolution"] = ResolutionConfig.parse(out["resolution"], "curriculum stage resolution")
    if out.get("patch_size") is not None:
        out["patch_size"] = as_patch_size(out["patch_size"])  # ints were given data.tubelet by build_curriculum
    return out


def _fmt(x: float) -> str:
    return {0.25: "1/4", 0.5: "1/2", 1.0: "1", round(2 ** -0.5, 6): "1/sqrt2"}.get(round(x, 6), f"{x:.3g}")


# -- the curricula ----------------------------------------------------------------------------------------

@CURRICULA.register("none")
def no_curriculum(*, total_steps: int, full: Stage) -> Curriculum:
    """The full shape throughout."""
    stage = derive(full, "full")
    return lambda step: stage


@CURRICULA.register("stepwise")
def stepwise(*, total_steps: int, stages: list[dict], full: Stage) -> Curriculum:
    """Explicit stages: ``[{until: 0.3, resolution: {...}, frames: 4}, ..., {name: last, ...}]``.

    ``until`` is the fraction of training at which a stage ends (the last stage runs to the end and needs
    none). Keys a stage does not give come from ``full``.
    """
    if not stages:
        raise ValueError("curriculum[stepwise] needs at least one stage")
    ends, built = [], []
    for i, st in enumerate(stages):
        st = dict(st)
        until = st.pop("until", None)
        name = st.pop("name", f"stage{i}")
        unknown = [k for k in st if k not in _CHANGE_KEYS]
        if unknown:
            raise KeyError(f"curriculum[stepwise].stages[{i}]: unknown keys {unknown}; "
                           f"valid: {['until', 'name', *_CHANGE_KEYS]}")
        if i < len(stages) - 1:
            if until is None or not 0.0 < float(until) <= 1.0:
                raise ValueError(f"curriculum[stepwise].stages[{i}].until must be a fraction in (0, 1]")
            ends.append(round(float(until) * total_steps))
        built.append(derive(full, name, **_changes(full, st)))
    if ends != sorted(ends):
        raise ValueError(f"curriculum[stepwise]: stage ends {ends} are not increasing")

    def curriculum(step: int) -> Stage:
        for end, stage in zip(ends, built):
            if step < end:
                return stage
        return built[-1]

    return curriculum


@CURRICULA.register("multigrid")
def multigrid(*, total_steps: int, full: Stage, cycles: int = 1, final_fraction: float = 0.25,
              long_cycle: Sequence[Sequence[float]] = LONG_CYCLE, short_cycle: bool = False,
              short_factors: Sequence[float] = SHORT_CYCLE,
              target: Literal["resolution", "token_budget"] = "resolution", min_frames: int = 1,
              min_size: int = 1) -> Curriculum:
    """PySlowFast's multigrid schedule in steps.

    The first ``1 - final_fraction`` of training runs ``cycles`` long cycles; each cycle gives every
    (frames, side) factor pair of ``long_cycle`` the same number of steps (PySlowFast: equal iterations per
    shape, the batch growing by ``1 / (t s^2)``; here the token budget is fixed and the examples per step
    grow instead). With ``short_cycle``, consecutive steps inside a long-cycle phase cycle through the sides
    ``short_factors`` (relative to the full side) and then the phase's own side. The rest of training runs
    at the full shape. ``target: token_budget`` scales the per-example token budget by ``t s^2`` instead of
    the resolution distribution by ``s``.
    """
    if target == "token_budget":
        _needs(full, "multigrid", "token_budget")
    if not 0.0 <= final_fraction <= 1.0 or cycles < 1:
        raise ValueError("curriculum[multigrid]: need 0 <= final_fraction <= 1 and cycles >= 1")
    factors = [(float(t), float(s)) for t, s in long_cycle]
    cycle_steps = total_steps - round(final_fraction * total_steps)
    phases = cycles * len(factors)
    full_stage = derive(full, "full")

    @functools.lru_cache(maxsize=64)
    def shaped(t: float, side: float) -> Stage:
        frames = max(min_frames, round(full.frames * t))
        name = f"T{_fmt(t)} S{_fmt(side)}"
        if target == "token_budget":
            budget = max(1, round(full.token_budget * t * side * side))
            return derive(full, name, token_budget=budget, frames=frames)
        return derive(full, name, resolution=full.resolution.scaled(side, min_size), frames=frames)

    def curriculum(step: int) -> Stage:
        if step >= cycle_steps or cycle_steps <= 0:
            return full_stage
        phase = min(phases - 1, step * phases // cycle_steps)
        t, s = factors[phase % len(factors)]
        side = s
        if short_cycle:
            sides = [*short_factors, s]
            side = sides[step % len(sides)]
        return shaped(t, side)

    return curriculum


def _difficulty_stage(full: Stage, target: str, d: float, min_size: int) -> Stage:
    if target == "resolution":
        return derive(full, f"res {int(d)}", resolution=full.resolution.scaled(d / full.resolution.largest(), min_size))
    if target == "token_budget":
        return derive(full, f"budget {int(d)}", token_budget=int(d))
    return derive(full, f"frames {int(d)}", frames=int(d))


def _rounded(x: float, step: float, min_difficulty: float, max_difficulty: float) -> float:
    """DeepSpeed's rounding (runtime/data_pipeline/curriculum_scheduler.py): floor, down to a multiple of
    ``difficulty_step``, at least the first multiple of the step at or above the minimum, at most the maximum."""
    d = math.floor(x)
    d -= d % step
    d = max(d, -(-min_difficulty // step) * step)
    return min(d, max_difficulty)


Target = Literal["resolution", "token_budget", "frames"]


@CURRICULA.register("fixed_linear")
def fixed_linear(*, total_steps: int, min_difficulty: float, max_difficulty: float, difficulty_step: float = 8,
                 total_curriculum_step: int | None = None, target: Target = "resolution", full: Stage,
                 min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_linear``: ``d(t) = floor((t/T)(max-min) + min)`` rounded down to a multiple of
    ``difficulty_step``, clipped to ``[min, max]`` (as ``deepspeed.runtime.data_pipeline.CurriculumScheduler``).

    With ``target: resolution`` the difficulty is the largest side: the full distribution is scaled so that
    its largest side is ``d``. ``T`` is ``total_curriculum_step`` (default: all of training).
    """
    horizon = total_curriculum_step or total_steps

    @functools.lru_cache(maxsize=256)
    def at(d: float) -> Stage:
        return _difficulty_stage(full, target, d, min_size)

    def curriculum(step: int) -> Stage:
        x = step / horizon * (max_difficulty - min_difficulty) + min_difficulty
        return at(_rounded(x, difficulty_step, min_difficulty, max_difficulty))

    return curriculum


@CURRICULA.register("fixed_root")
def fixed_root(*, total_steps: int, min_difficulty: float, max_difficulty: float, difficulty_step: float = 8,
               root_degree: float = 2, total_curriculum_step: int | None = None, target: Target = "resolution",
               full: Stage, min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_root``: as ``fixed_linear`` with ``(t/T)^(1/root_degree)`` (fast early growth)."""
    horizon = total_curriculum_step or total_steps

    @functools.lru_cache(maxsize=256)
    def at(d: float) -> Stage:
        return _difficulty_stage(full, target, d, min_size)

    def curriculum(step: int) -> Stage:
        frac = (step / horizon) ** (1.0 / root_degree)
        x = frac * (max_difficulty - min_difficulty) + min_difficulty
        return at(_rounded(x, difficulty_step, min_difficulty, max_difficulty))

    return curriculum


@CURRICULA.register("fixed_discrete")
def fixed_discrete(*, total_steps: int, difficulty: list[float], max_step: list[int], target: Target = "resolution",
                   full: Stage, min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_discrete``: ``difficulty[i]`` while ``step <= max_step[i]``, then the last one.

    ``len(difficulty) == len(max_step) + 1``, as in DeepSpeed.
    """
    if len(difficulty) != len(max_step) + 1:
        raise ValueError(f"curriculum[fixed_discrete]: {len(difficulty)} difficulties need {len(difficulty) - 1} "
                         f"max_step entries, got {len(max_step)}")
    stages = [_difficulty_stage(full, target, d, min_size) for d in difficulty]

    def curriculum(step: int) -> Stage:
        for limit, stage in zip(max_step, stages):
            if step <= limit:
                return stage
        return stages[-1]

    return curriculum


# -- building and describing ------------------------------------------------------------------------------

def build_curriculum(cfg: dict | None, *, total_steps: int, data: DataConfig) -> Curriculum:
    """The ``curriculum:`` section (``None`` means ``none``) to a step -> stage function. The full stage is
    ``data``'s own shape with the section's ``full:`` keys over it; every distinct stage of the schedule is
    checked against ``data`` here (frames a multiple of the tubelet, within the token cap), before training."""
    cfg = dict(cfg or {"type": "none"})
    overrides = dict(cfg.pop("full", None) or {})
    for spec in [overrides, *(cfg.get("stages") or [])]:
        if isinstance(spec, dict) and spec.get("patch_size") is not None:
            spec["patch_size"] = list(as_patch_size(spec["patch_size"], data.tubelet))
    base = data.full_stage().to_dict()
    if overrides.get("token_budget") is not None:  # the curriculum's full shape is a budget, not a resolution
        base.pop("resolution", None)
    full = make_stage(data, {**base, **overrides})
    curriculum = CURRICULA.build(cfg, total_steps=total_steps, full=full)
    seen: set = set()
    for step in range(total_steps):
        stage = curriculum(step)
        if id(stage) not in seen:
            seen.add(id(stage))
            try:
                make_stage(data, stage)
            except (ValueError, KeyError) as e:
                raise ValueError(f"curriculum[{cfg.get('type')!r}] stage {stage.name!r} at step {step}: {e}") from None
    return curriculum


def segments(curriculum: Curriculum, total_steps: int, start: int = 0) -> list[dict]:
    """Runs of equal stage name: ``[{start, end, name, cost, stage}]`` (end exclusive, ``stage`` as
    :meth:`Stage.to_dict`). Short cycles collapse to one row per distinct name run, so this is for logs and
    plots, not for replaying the schedule."""
    out: list[dict] = []
    for step in range(start, total_steps):
        stage = curriculum(step)
        if out and out[-1]["name"] == stage.name:
            out[-1]["end"] = step + 1
        else:
            out.append({"start": step, "end": step + 1, "name": stage.name, "cost": stage.cost,
                        "stage": stage.to_dict()})
    return out


def plan(curriculum: Curriculum, total_steps: int, max_rows: int = 2000) -> list[dict]:
    """:func:`segments` for ``schedule.json`` and the plot, at most ``max_rows`` rows: a schedule that changes
    more often (a short cycle) is summarised in equal windows named by their most frequent stage, with
    ``cost = 1 / mean(1 / cost)`` so that ``1 / cost`` stays the window's mean relative examples per step."""
    rows = segments(curriculum, total_steps)
    if len(rows) <= max_rows:
        return rows
    out = []
    for w in range(max_rows):
        start, end = w * total_steps // max_rows, (w + 1) * total_steps // max_rows
        if end <= start:
            continue
        stages = [curriculum(step) for step in range(start, end)]
        names = [st.name for st in stages]
        inv = sum(1.0 / st.cost for st in stages) / len(stages)
        out.append({"start": start, "end": end, "name": max(set(names), key=names.count), "cost": 1.0 / inv})
    return out


def describe(curriculum: Curriculum, total_steps: int) -> str:
    """A table of the schedule for the run log: steps, stage, cost and the relative examples per step."""
    rows = segments(curriculum, total_steps)
    if len(rows) > 40:  # a short cycle changes every step: summarise by name
        by_name: dict[str, dict] = {}
        for r in rows:
            agg = by_name.setdefault(r["name"], {**r, "steps": 0})
            agg["steps"] += r["end"] - r["start"]
        lines = [f"  {n:<22} {a['steps']:>7} steps  cost {a['cost']:.3f}  examples/step x{1 / a['cost']:.2f}"
                 for n, a in by_name.items()]
    else:
        lines = [f"  steps {r['start']:>6}-{r['end'] - 1:<6} {r['name']:<22} cost {r['cost']:.3f}  "
                 f"examples/step x{1 / r['cost']:.2f}  {curriculum(r['start']).describe()}" for r in rows]
    return "curriculum schedule:\n" + "\n".join(lines)

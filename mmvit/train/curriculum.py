"""Coarse-to-fine curricula: pure functions from the global step to a data stage.

Multigrid training (Wu et al. 2020, "A Multigrid Method for Efficiently Training Video Models") shows
that training on coarse, cheap shapes first and the full shape last reaches the same accuracy in several
times fewer iterations. With Patch n' Pack (NaViT) the micro-batch keeps a fixed token count, so a coarse
stage simply fits more examples into each step: nothing is rebuilt, only the loader's sampling changes.

A stage is a plain dict with the loader keys (``resolution``, ``token_budget``, ``frames``, ``patch_size``)
plus ``name`` and ``cost``: the expected tokens per example relative to the full shape (examples per step
grow as ``1 / cost``). ``CURRICULA.build({"type": ..., ...}, total_steps=T)`` returns a callable
``curriculum(step) -> stage`` that depends on nothing but its arguments.

``full`` (the full-shape stage) comes from the curriculum config or, for keys it does not give, from the
keys of the same names in the ``data:`` section.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from mmvit.registry import CURRICULA

LOADER_KEYS = ("resolution", "token_budget", "frames", "patch_size")
Stage = dict  # {"name", "cost", and any of LOADER_KEYS}
Curriculum = Callable[[int], Stage]

# PySlowFast's long cycle, (frames, side) factors relative to the full shape, and its short-cycle sides.
LONG_CYCLE = ((0.25, 2 ** -0.5), (0.5, 2 ** -0.5), (0.5, 1.0), (1.0, 1.0))
SHORT_CYCLE = (0.5, 2 ** -0.5)
_SIDE_KEYS = ("min", "max", "mean", "std", "values")


# -- helpers on resolution distributions (pure) ---------------------------------------------------------
# A distribution is the data pipeline's ``resolution`` spec: ``{type: uniform|truncnorm|fixed, mode: side|tokens,
# min, max, mean, std, values}`` (see mmvit/data/resolution.py); a bare number is one fixed side.

def _as_spec(spec: dict | float) -> dict:
    return {"type": "fixed", "values": [float(spec)]} if isinstance(spec, (int, float)) else dict(spec)


def scale_resolution(spec: dict | float, factor: float, min_size: int = 1) -> dict:
    """Scale every side length of a distribution by ``factor`` (``{uniform, 64..256}`` x 0.5 -> 32..128).

    In ``mode: tokens`` the values are tokens per frame and scale by ``factor ** 2``. Results are rounded to
    whole pixels (tokens), at least ``min_size``.
    """
    out = _as_spec(spec)
    f = factor * factor if out.get("mode") == "tokens" else factor
    for key in _SIDE_KEYS:
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out[key] = [max(min_size, round(v * f)) for v in value]
        elif key == "std":
            out[key] = float(value) * f
        else:
            out[key] = max(min_size, round(value * f))
    return out


def largest_side(spec: dict | float) -> float:
    """The largest value a distribution draws (``max`` or the largest of ``values``), as a side length."""
    spec = _as_spec(spec)
    top = float(max(spec["values"])) if spec.get("type") == "fixed" else float(spec.get("max", 256))
    return math.sqrt(top) if spec.get("mode") == "tokens" else top


def mean_square_side(spec: dict | float) -> float:
    """``E[side^2]`` of a distribution (tokens per frame grow with it); ``E[tokens]`` in ``mode: tokens``."""
    spec = _as_spec(spec)
    tokens = spec.get("mode") == "tokens"
    kind = spec.get("type", "uniform")
    if kind == "fixed":
        vals = [float(v) for v in spec["values"]]
        return sum(v if tokens else v * v for v in vals) / len(vals)
    a, b = float(spec.get("min", 64)), float(spec.get("max", 256))
    if kind == "uniform":
        return (a + b) / 2 if tokens else (a * a + a * b + b * b) / 3
    # truncnorm: numerical mean over [a, b] (defaults as in the data pipeline: mean = min, std = (max-min)/2)
    mu = float(spec["mean"]) if spec.get("mean") is not None else a
    sd = float(spec["std"]) if spec.get("std") is not None else max((b - a) / 2, 1e-6)
    xs = [a + (b - a) * (i + 0.5) / 512 for i in range(512)]
    ws = [math.exp(-0.5 * ((x - mu) / sd) ** 2) for x in xs]
    return sum(w * (x if tokens else x * x) for w, x in zip(ws, xs)) / sum(ws)


def _patch_area(patch_size: Any) -> float:
    if isinstance(patch_size, (list, tuple)):
        return float(patch_size[-1]) * float(patch_size[-2])
    return float(patch_size) ** 2


def relative_cost(stage: dict, full: dict) -> float:
    """Expected tokens per example of ``stage`` relative to ``full`` (1.0 at the full shape).

    A token budget (per example, all frames) compares directly. Otherwise ``E[side^2]`` over the patch area,
    times the frame ratio (frames only cost on videos, so on mixed data this overstates their saving).
    The patch area counts only when both stages name a ``patch_size``.
    """
    if stage.get("token_budget") is not None and full.get("token_budget"):
        return float(stage["token_budget"]) / float(full["token_budget"])
    cost = 1.0
    if stage.get("resolution") is not None and full.get("resolution") is not None:
        cost *= mean_square_side(stage["resolution"]) / mean_square_side(full["resolution"])
    if stage.get("patch_size") is not None and full.get("patch_size") is not None:
        cost *= _patch_area(full["patch_size"]) / _patch_area(stage["patch_size"])
    if stage.get("frames") and full.get("frames"):
        cost *= float(stage["frames"]) / float(full["frames"])
    return cost


def make_stage(name: str, full: dict, **changes: Any) -> Stage:
    """``full`` with ``changes`` applied, named, with its relative cost."""
    stage = {k: v for k, v in full.items() if k in LOADER_KEYS}
    stage.update({k: v for k, v in changes.items() if v is not None})
    if stage.get("token_budget") is not None and stage.get("resolution") is not None:
        # The loader takes one of the two; the one this stage sets wins, else the budget.
        stage.pop("token_budget" if changes.get("resolution") is not None else "resolution")
    stage["name"] = name
    stage["cost"] = relative_cost(stage, full)
    return stage


def loader_stage(stage: Stage) -> dict:
    """The part of a stage the loader takes (``control.set_stage``)."""
    return {k: v for k, v in stage.items() if k in LOADER_KEYS}


def _check_full(full: dict | None, what: str, needs: Sequence[str] = ()) -> dict:
    full = dict(full or {})
    unknown = [k for k in full if k not in LOADER_KEYS]
    if unknown:
        raise KeyError(f"curriculum[{what!r}].full: unknown keys {unknown}; stage keys are {list(LOADER_KEYS)}")
    for key in needs:
        if full.get(key) is None:
            raise KeyError(f"curriculum[{what!r}] needs full.{key} (the full-shape {key}), in the curriculum "
                           f"config or as data.{key}")
    return full


def _fmt(x: float) -> str:
    return {0.25: "1/4", 0.5: "1/2", 1.0: "1", round(2 ** -0.5, 6): "1/sqrt2"}.get(round(x, 6), f"{x:.3g}")


# -- the curricula ----------------------------------------------------------------------------------------

@CURRICULA.register("none")
def no_curriculum(*, total_steps: int, full: dict | None = None) -> Curriculum:
    """The full shape throughout."""
    stage = make_stage("full", _check_full(full, "none"))
    return lambda step: dict(stage)


@CURRICULA.register("stepwise")
def stepwise(*, total_steps: int, stages: list[dict], full: dict | None = None) -> Curriculum:
    """Explicit stages: ``[{until: 0.3, resolution: {...}, frames: 4}, ..., {name: last, ...}]``.

    ``until`` is the fraction of training at which a stage ends (the last stage runs to the end and needs
    none). Keys a stage does not give come from ``full``.
    """
    full = _check_full(full, "stepwise")
    if not stages:
        raise ValueError("curriculum[stepwise] needs at least one stage")
    ends, built = [], []
    for i, st in enumerate(stages):
        st = dict(st)
        until = st.pop("until", None)
        name = st.pop("name", f"stage{i}")
        unknown = [k for k in st if k not in LOADER_KEYS]
        if unknown:
            raise KeyError(f"curriculum[stepwise].stages[{i}]: unknown keys {unknown}; "
                           f"valid: {['until', 'name', *LOADER_KEYS]}")
        if i < len(stages) - 1:
            if until is None or not 0.0 < float(until) <= 1.0:
                raise ValueError(f"curriculum[stepwise].stages[{i}].until must be a fraction in (0, 1]")
            ends.append(round(float(until) * total_steps))
        built.append(make_stage(name, full, **st))
    if ends != sorted(ends):
        raise ValueError(f"curriculum[stepwise]: stage ends {ends} are not increasing")

    def curriculum(step: int) -> Stage:
        for end, stage in zip(ends, built):
            if step < end:
                return dict(stage)
        return dict(built[-1])

    return curriculum


@CURRICULA.register("multigrid")
def multigrid(*, total_steps: int, full: dict | None = None, cycles: int = 1, final_fraction: float = 0.25,
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
    needs = ["token_budget"] if target == "token_budget" else ["resolution"]
    full = _check_full(full, "multigrid", needs)
    if target not in ("resolution", "token_budget"):
        raise ValueError(f"curriculum[multigrid].target must be resolution or token_budget, got {target!r}")
    if not 0.0 <= final_fraction <= 1.0 or cycles < 1:
        raise ValueError("curriculum[multigrid]: need 0 <= final_fraction <= 1 and cycles >= 1")
    factors = [(float(t), float(s)) for t, s in long_cycle]
    cycle_steps = total_steps - round(final_fraction * total_steps)
    phases = cycles * len(factors)
    full_stage = make_stage("full", full)

    def shaped(t: float, s: float, side: float) -> Stage:
        frames = max(min_frames, round(full["frames"] * t)) if full.get("frames") else None
        name = f"T{_fmt(t)} S{_fmt(side)}"
        if target == "token_budget":
            budget = max(1, round(full["token_budget"] * t * side * side))
            return make_stage(name, full, token_budget=budget, frames=frames)
        return make_stage(name, full, resolution=scale_resolution(full["resolution"], side, min_size), frames=frames)

    def curriculum(step: int) -> Stage:
        if step >= cycle_steps or cycle_steps <= 0:
            return dict(full_stage)
        phase = min(phases - 1, step * phases // cycle_steps)
        t, s = factors[phase % len(factors)]
        side = s
        if short_cycle:
            sides = [*short_factors, s]
            side = sides[step % len(sides)]
        return shaped(t, s, side)

    return curriculum


def _difficulty_stage(full: dict, target: str, d: float, min_size: int, what: str) -> Stage:
    if target == "resolution":
        res = full.get("resolution")
        if res is None:
            raise KeyError(f"curriculum[{what!r}] with target resolution needs full.resolution")
        return make_stage(f"res {int(d)}", full, resolution=scale_resolution(res, d / largest_side(res), min_size))
    if target == "token_budget":
        return make_stage(f"budget {int(d)}", full, token_budget=int(d))
    if target == "frames":
        return make_stage(f"frames {int(d)}", full, frames=int(d))
    raise ValueError(f"curriculum[{what!r}].target must be resolution, token_budget or frames, got {target!r}")


def _rounded(x: float, step: float, max_difficulty: float) -> float:
    # DeepSpeed's rounding: down to a multiple of difficulty_step, never above the maximum.
    return min(max_difficulty, math.floor(x / step) * step)


@CURRICULA.register("fixed_linear")
def fixed_linear(*, total_steps: int, min_difficulty: float, max_difficulty: float, difficulty_step: float = 8,
                 total_curriculum_step: int | None = None, target: Literal["resolution", "token_budget", "frames"] =
                 "resolution", full: dict | None = None, min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_linear``: ``d(t) = min(max, floor(((t/T)(max-min) + min) / step) * step)``.

    With ``target: resolution`` the difficulty is the largest side: the full distribution is scaled so that
    its largest side is ``d``. ``T`` is ``total_curriculum_step`` (default: all of training).
    """
    full = _check_full(full, "fixed_linear")
    horizon = total_curriculum_step or total_steps

    def curriculum(step: int) -> Stage:
        x = min(1.0, step / horizon) * (max_difficulty - min_difficulty) + min_difficulty
        return _difficulty_stage(full, target, _rounded(x, difficulty_step, max_difficulty), min_size, "fixed_linear")

    return curriculum


@CURRICULA.register("fixed_root")
def fixed_root(*, total_steps: int, min_difficulty: float, max_difficulty: float, difficulty_step: float = 8,
               root_degree: float = 2, total_curriculum_step: int | None = None,
               target: Literal["resolution", "token_budget", "frames"] = "resolution", full: dict | None = None,
               min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_root``: as ``fixed_linear`` with ``(t/T)^(1/root_degree)`` (fast early growth)."""
    full = _check_full(full, "fixed_root")
    horizon = total_curriculum_step or total_steps

    def curriculum(step: int) -> Stage:
        frac = min(1.0, step / horizon) ** (1.0 / root_degree)
        x = frac * (max_difficulty - min_difficulty) + min_difficulty
        return _difficulty_stage(full, target, _rounded(x, difficulty_step, max_difficulty), min_size, "fixed_root")

    return curriculum


@CURRICULA.register("fixed_discrete")
def fixed_discrete(*, total_steps: int, difficulty: Sequence[float], max_step: Sequence[int],
                   target: Literal["resolution", "token_budget", "frames"] = "resolution", full: dict | None = None,
                   min_size: int = 1) -> Curriculum:
    """DeepSpeed's ``fixed_discrete``: ``difficulty[i]`` while ``step <= max_step[i]``, then the last one.

    ``len(difficulty) == len(max_step) + 1``, as in DeepSpeed.
    """
    full = _check_full(full, "fixed_discrete")
    if len(difficulty) != len(max_step) + 1:
        raise ValueError(f"curriculum[fixed_discrete]: {len(difficulty)} difficulties need {len(difficulty) - 1} "
                         f"max_step entries, got {len(max_step)}")
    stages = [_difficulty_stage(full, target, d, min_size, "fixed_discrete") for d in difficulty]

    def curriculum(step: int) -> Stage:
        for limit, stage in zip(max_step, stages):
            if step <= limit:
                return dict(stage)
        return dict(stages[-1])

    return curriculum


# -- building and describing ------------------------------------------------------------------------------

def build_curriculum(cfg: dict | None, *, total_steps: int, data_cfg: dict | None = None) -> Curriculum:
    """The ``curriculum:`` section (``None`` means ``none``) to a step -> stage function."""
    cfg = dict(cfg or {"type": "none"})
    full = {k: v for k, v in (data_cfg or {}).items() if k in LOADER_KEYS and v is not None}
    full.update(cfg.get("full") or {})
    cfg["full"] = full
    return CURRICULA.build(cfg, total_steps=total_steps)


def segments(curriculum: Curriculum, total_steps: int, start: int = 0) -> list[dict]:
    """Runs of equal stage name: ``[{start, end, **stage}]`` (end exclusive). Short cycles collapse to one
    row per distinct name run, so this is for logs and plots, not for replaying the schedule."""
    out: list[dict] = []
    for step in range(start, total_steps):
        stage = curriculum(step)
        if out and out[-1]["name"] == stage["name"]:
            out[-1]["end"] = step + 1
        else:
            out.append({"start": step, "end": step + 1, **stage})
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
        names = [st["name"] for st in stages]
        inv = sum(1.0 / st["cost"] for st in stages) / len(stages)
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
                 f"examples/step x{1 / r['cost']:.2f}  {loader_stage(r)}" for r in rows]
    return "curriculum schedule:\n" + "\n".join(lines)

"""Periodic evaluation during training: the same passes, runner and per-video aggregation as
tools/eval_video.py, on the live model.

Every rank evaluates its share of the ``eval.split`` (videos under the ``eval.views`` view sets, scored per
video after aggregating their views; images per image), in lockstep so that a ZeRO-3 model, whose forward
gathers parameters from all ranks, never waits on a rank that has run out of batches. Rank 0 combines the
shares and logs one record: per pass ``<kind>/<views>/<level>`` top-1, top-5 and mean class accuracy, and as
headline ``top1``/``top5`` the accuracy over every video (first view set) and image of the split.
"""

from __future__ import annotations

from typing import Any

import torch

from mmvit import dist
from mmvit.eval.evaluate import evaluate_rank
from mmvit.eval.plan import EvalSettings, plan_passes
from mmvit.eval.runner import gather_outputs
from mmvit.eval.summary import listed_counts, summarize
from mmvit.eval.views import parse_view_sets


def eval_settings(evalc: Any, seed: int) -> EvalSettings:
    return EvalSettings(split=evalc.split, view_sets=parse_view_sets(evalc.views),
                        kinds=("video", "image") if evalc.images else ("video",), aggregate=evalc.aggregate,
                        seed=seed, max_batches=evalc.batches)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, cfg: dict, evalc: Any, *, seed: int, device: torch.device,
                   dtype: torch.dtype, dummy_batch=None, tables=None) -> dict | None:
    """Evaluate on every rank; on rank 0 returns ``{"top1", "top5", "count", "passes": {name: {...}}}``."""
    settings = eval_settings(evalc, seed)
    data_cfg = dict(cfg["data"])
    passes = plan_passes(settings, data_cfg)
    was_training = model.training
    try:
        outputs = evaluate_rank(model, cfg, settings, rank=dist.rank(), world_size=dist.world_size(), device=device,
                                passes=passes, lockstep=True, dummy_batch=dummy_batch, dtype=dtype, tables=tables)
    finally:
        model.train(was_training)
    per_rank = gather_outputs(outputs)
    if dist.rank() != 0:
        return None
    results = summarize(passes, per_rank, settings, tables, listed_counts(passes, data_cfg, settings, tables))
    out: dict = {"passes": {}, "warnings": []}
    hits = hits5 = count = 0
    seen_kinds: set[str] = set()
    for r in results:
        out["passes"][r["name"]] = {k: r[k] for k in ("top1", "top5", "mean_class_acc", "samples")}
        out["warnings"] += [f"{r['name']}: {w}" for w in r["warnings"]]
        if (r["kind"], r["task"]) not in seen_kinds:  # each video and image counted once in the headline
            seen_kinds.add((r["kind"], r["task"]))
            hits += r["top1"] * r["samples"]
            hits5 += r["top5"] * r["samples"]
            count += r["samples"]
    out.update(top1=hits / max(1, count), top5=hits5 / max(1, count), count=count)
    return out


def flat(result: dict, prefix: str = "") -> dict:
    """A result as flat scalars for the metrics record: ``top1``, ``video/full/config/top1``, ..."""
    values = {f"{prefix}{k}": result[k] for k in ("top1", "top5", "count")}
    for name, metrics in result["passes"].items():
        for k, v in metrics.items():
            values[f"{prefix}{name}/{k}"] = v
    return values


def describe(result: dict) -> str:
    parts = [f"{name} top-1 {m['top1']:.4f} ({m['samples']})" for name, m in result["passes"].items()]
    return f"top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} over {result['count']} videos/images; " + \
        "; ".join(parts)

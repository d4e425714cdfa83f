"""Metrics of every evaluation pass from the outputs of all ranks: views aggregated per video id, checked.

Each pass's views are aggregated per video id (``mmvit.eval.aggregate``), checking that no (video, view) is
counted twice and that every video has all its views, and the number of videos is compared with what the
split's sources list, so a sharding bug shows up as an error instead of a quietly wrong number.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import torch

from mmvit.eval.aggregate import ViewScores, aggregate_views
from mmvit.eval.metrics import classification_metrics
from mmvit.eval.plan import EvalPass, EvalSettings, pass_data_config
from mmvit.eval.runner import RankOutput

log = logging.getLogger("mmvit.eval")


def listed_counts(passes: list[EvalPass], data_cfg: dict, settings: EvalSettings, tables=None
                  ) -> list[dict[str, int] | None]:
    """How many samples of its kind each pass's sources list, per task (``None`` for a pass when a source
    cannot say: sources of mixed kinds such as webdataset, or of unknown size)."""
    from mmvit.data import resolve_data_config
    from mmvit.data.sources import SourceContext, build_sources

    counts: list[dict[str, int] | None] = []
    for p in passes:
        cfg = resolve_data_config(pass_data_config(data_cfg, p, settings), settings.split)
        ctx = SourceContext(allow_outside_root=cfg.allow_outside_root, allow_pipe_urls=cfg.allow_pipe_urls)
        total: dict[str, int] | None = {}
        for src in build_sources(cfg.sources, ctx, tables):
            n = src.num_items()
            if tuple(src.kinds) != (p.kind,) or n is None:
                total = None
                break
            task = src.task or "default"
            total[task] = total.get(task, 0) + n
        counts.append(total)
    return counts


def _drop_incomplete(scores: ViewScores, expected: int) -> tuple[ViewScores, int]:
    """Remove the videos with fewer than ``expected`` views (after bad samples); returns how many."""
    n_views = collections.Counter(scores.video_ids)
    keep = [i for i, v in enumerate(scores.video_ids) if n_views[v] >= expected]
    if len(keep) == len(scores.video_ids):
        return scores, 0
    index = torch.tensor(keep, dtype=torch.long)
    kept = ViewScores([scores.video_ids[i] for i in keep], [scores.views[i] for i in keep], scores.labels[index],
                      scores.logits[index])
    return kept, sum(1 for n in n_views.values() if n < expected)


def summarize(passes: list[EvalPass], outputs: list[list[RankOutput]], settings: EvalSettings,
              tables=None, listed: list[dict[str, int] | None] | None = None) -> list[dict]:
    """Metrics per pass and task from the outputs of every rank (``outputs[rank][pass]``).

    Each pass's views are aggregated per video id, checking that no (video, view) is counted twice and
    that every video has all ``expected_views``, and the number of videos is compared with ``listed`` (see
    :func:`listed_counts`). Missing views or videos raise ``ValueError``, unless the loader reported bad
    samples in that pass (or ``max_batches`` cut it short): then the incomplete videos are left out and the
    pass gets a warning. With several tasks (label spaces) every pass gives one result per task, scored
    over that task's classes only (``tables``: the run's ``ClassTables``). Returns one dict per result.
    """
    results = []
    for i, p in enumerate(passes):
        merged = RankOutput.concat([rank_out[i] for rank_out in outputs])
        views_of_kind = [t for t, k in zip(merged.view_tasks(), merged.kinds) if k == p.kind]
        if not views_of_kind:
            raise ValueError(f"pass {p.name}: no {p.kind} was evaluated (empty split, or every sample was bad)")
        order = list(tables) if tables is not None else []
        present = sorted(set(views_of_kind), key=lambda t: (order.index(t) if t in order else len(order), t))
        for task in present:
            results.append(_summarize_task(p, merged, task, settings, tables, len(present) > 1 or task != "default",
                                           (listed[i] or {}).get(task) if listed is not None and listed[i] is not None
                                           else None))
    _check_same_videos(results)
    return results


def _summarize_task(p: EvalPass, merged: RankOutput, task: str, settings: EvalSettings, tables, named: bool,
                    n_listed: int | None) -> dict:
    scores = merged.select(p.kind, task)
    name = f"{task}/{p.name}" if named else p.name
    k = len(tables[task]) if tables is not None and task in tables else scores.logits.shape[1]
    scores = ViewScores(scores.video_ids, scores.views, scores.labels, scores.logits[:, :k])
    lenient = bool(merged.bad) or settings.max_batches is not None
    why = f"bad samples skipped: {merged.bad}" if merged.bad else "--max-batches cut the pass short"
    warnings = []
    if lenient:
        scores, dropped = _drop_incomplete(scores, p.expected_views)
        if dropped:
            warnings.append(f"{dropped} {p.kind}s left out with fewer than {p.expected_views} views ({why})")
    ids, agg, labels = aggregate_views(scores, settings.aggregate, expected_views=p.expected_views)
    if n_listed is not None and len(ids) != n_listed:
        msg = f"{len(ids)} of the {n_listed} listed {p.kind}s were evaluated"
        if len(ids) > n_listed:
            raise ValueError(f"pass {name}: {msg}: more than listed (ids from elsewhere?)")
        if not lenient:
            raise ValueError(f"pass {name}: {msg}, and no sample was reported bad: sharding lost some")
        warnings.append(f"{msg} ({why})")
    present = sorted(set(labels.tolist()))
    metrics = classification_metrics(agg, labels, k, classes=present)
    view_metrics = classification_metrics(scores.logits, scores.labels, k, classes=present)
    return {
        "name": name, "task": task, "kind": p.kind, "views": p.views_name, "views_per_video": p.expected_views,
        "setting": p.setting, "value": p.value, "level": p.level,
        "samples": len(ids), "evaluated_views": len(scores.video_ids),
        "top1": metrics["top1"], "top5": metrics["top5"], "mean_class_acc": metrics["mean_class_acc"],
        "single_view_top1": view_metrics["top1"],
        "per_class_acc": metrics["per_class_acc"], "confusion": metrics["confusion"], "classes": present,
        "listed": n_listed, "bad_samples": merged.bad, "warnings": warnings,
        "throughput": {**dataclasses.asdict(merged.throughput), **merged.throughput.rates()},
        # Not written to results.json (see report.py): for predictions files and cross-pass checks.
        "_ids": ids, "_scores": agg, "_labels": labels,
    }


def _check_same_videos(results: list[dict]) -> None:
    """Warn when passes of one kind saw different videos (a sample skipped as bad in one pass only)."""
    first: dict[tuple[str, str], tuple[str, set]] = {}
    for r in results:
        ids = set(r["_ids"])
        key = (r["kind"], r["task"])
        if key not in first:
            first[key] = (r["name"], ids)
        elif ids != first[key][1]:
            name, ref = first[key]
            r["warnings"].append(
                f"{len(ref - ids)} of the videos of {name} are missing and {len(ids - ref)} are extra")
            log.warning("pass %s: %s", r["name"], r["warnings"][-1])


def class_names(tables=None, path: str | None = None) -> dict[str, list[str]] | None:
    """Class names per task: from ``path`` (one per line, for a run with one task) or the run's tables."""
    if path is not None:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if tables is not None and len(tables) > 1:
            raise ValueError("--class-names gives one list of names, but the run has tasks "
                             f"{list(tables)}: their names come from the run's class tables")
        return {(tables.tasks[0] if tables is not None else "default"): names}
    if tables is None:
        return None
    return {t: list(table.names) for t, table in tables.items()}

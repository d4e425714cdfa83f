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


def listed_counts(passes: list[EvalPass], data_cfg: dict, settings: EvalSettings) -> list[int | None]:
    """How many samples of its kind each pass's sources list (``None`` when a source cannot say: sources
    of mixed kinds such as webdataset, or of unknown size)."""
    from mmvit.data import resolve_data_config
    from mmvit.data.sources import SourceContext, build_sources

    counts: list[int | None] = []
    for p in passes:
        cfg = resolve_data_config(pass_data_config(data_cfg, p, settings), settings.split)
        ctx = SourceContext(allow_outside_root=cfg.allow_outside_root, allow_pipe_urls=cfg.allow_pipe_urls)
        total: int | None = 0
        for src in build_sources(cfg.sources, ctx):
            n = src.num_items()
            if getattr(src, "kind", None) != p.kind or n is None:
                total = None
                break
            total += n
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
              num_classes: int | None = None, listed: list[int | None] | None = None) -> list[dict]:
    """Metrics per pass from the outputs of every rank (``outputs[rank][pass]``).

    Each pass's views are aggregated per video id, checking that no (video, view) is counted twice and
    that every video has all ``expected_views``, and the number of videos is compared with ``listed`` (see
    :func:`listed_counts`). Missing views or videos raise ``ValueError``, unless the loader reported bad
    samples in that pass (or ``max_batches`` cut it short): then the incomplete videos are left out and the
    pass gets a warning. Returns one dict per pass.
    """
    results = []
    for i, p in enumerate(passes):
        merged = RankOutput.concat([rank_out[i] for rank_out in outputs])
        scores = merged.select(p.kind)
        if len(scores.video_ids) == 0:
            raise ValueError(f"pass {p.name}: no {p.kind} was evaluated (empty split, or every sample was bad)")
        lenient = bool(merged.bad) or settings.max_batches is not None
        why = f"bad samples skipped: {merged.bad}" if merged.bad else "--max-batches cut the pass short"
        warnings = []
        if lenient:
            scores, dropped = _drop_incomplete(scores, p.expected_views)
            if dropped:
                warnings.append(f"{dropped} {p.kind}s left out with fewer than {p.expected_views} views ({why})")
        ids, agg, labels = aggregate_views(scores, settings.aggregate, expected_views=p.expected_views)
        n_listed = listed[i] if listed is not None else None
        if n_listed is not None and len(ids) != n_listed:
            msg = f"{len(ids)} of the {n_listed} listed {p.kind}s were evaluated"
            if len(ids) > n_listed:
                raise ValueError(f"pass {p.name}: {msg}: more than listed (ids from elsewhere?)")
            if not lenient:
                raise ValueError(f"pass {p.name}: {msg}, and no sample was reported bad: sharding lost some")
            warnings.append(f"{msg} ({why})")
        k = num_classes or agg.shape[1]
        present = sorted(set(labels.tolist()))
        metrics = classification_metrics(agg, labels, k, classes=present)
        view_metrics = classification_metrics(scores.logits, scores.labels, k, classes=present)
        results.append({
            "name": p.name, "kind": p.kind, "views": p.views_name, "views_per_video": p.expected_views,
            "setting": p.setting, "value": p.value, "level": p.level,
            "samples": len(ids), "evaluated_views": len(scores.video_ids),
            "top1": metrics["top1"], "top5": metrics["top5"], "mean_class_acc": metrics["mean_class_acc"],
            "single_view_top1": view_metrics["top1"],
            "per_class_acc": metrics["per_class_acc"], "confusion": metrics["confusion"], "classes": present,
            "listed": n_listed, "bad_samples": merged.bad, "warnings": warnings,
            "throughput": {**dataclasses.asdict(merged.throughput), **merged.throughput.rates()},
            # Not written to results.json (see report.py): for predictions files and cross-pass checks.
            "_ids": ids, "_scores": agg, "_labels": labels,
        })
    _check_same_videos(results)
    return results


def _check_same_videos(results: list[dict]) -> None:
    """Warn when passes of one kind saw different videos (a sample skipped as bad in one pass only)."""
    first: dict[str, tuple[str, set]] = {}
    for r in results:
        ids = set(r["_ids"])
        if r["kind"] not in first:
            first[r["kind"]] = (r["name"], ids)
        elif ids != first[r["kind"]][1]:
            name, ref = first[r["kind"]]
            r["warnings"].append(
                f"{len(ref - ids)} of the videos of {name} are missing and {len(ids - ref)} are extra")
            log.warning("pass %s: %s", r["name"], r["warnings"][-1])




def class_names(cfg: dict, split: str, num_classes: int | None, path: str | None = None) -> list[str] | None:
    """Names of the classes, if known: ``path`` (one per line), else a ``classes`` list or file given by a
    source of the split."""
    if path is not None:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    from mmvit.eval.plan import split_sources

    for s in split_sources(dict(cfg.get("data") or {}), split):
        classes = s.get("classes")
        if isinstance(classes, str):
            with open(classes) as f:
                classes = [line.strip() for line in f if line.strip()]
        if isinstance(classes, (list, tuple)) and (num_classes is None or len(classes) == num_classes):
            return [str(c) for c in classes]
    return None

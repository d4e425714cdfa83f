"""The evaluation plan behind tools/eval_video.py: passes over (kind, view set, compute level), per rank.

NaViT (Dehghani et al. 2023) serves many compute levels with one model: the same weights are evaluated at
several token budgets (tokens per example) or resolutions. Videos are evaluated under each view set
(``mmvit.eval.views``: PySlowFast's clips x crops, NaViT's full frame), images once per compute level.
Each combination is one *pass*: a fresh deterministic loader for the split (``mmvit.data.build_loader``,
``train=False``) whose video sources get the pass's views and whose stage sets the budget or resolution.

Work splits in two so that sharding can be tested without processes:

1. :func:`evaluate_rank`: one rank runs every pass over its share of the data -> one ``RankOutput`` each.
2. :func:`summarize`: the outputs of all ranks (``gather_outputs``), pass by pass, are concatenated,
   aggregated per video id with the expected number of views (a dropped or doubly counted view raises)
   and turned into metrics and throughput.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from mmvit.eval.aggregate import Method, ViewScores, aggregate_views
from mmvit.eval.metrics import classification_metrics
from mmvit.eval.runner import RankOutput, run_eval
from mmvit.eval.views import ViewSet, parse_view_sets

log = logging.getLogger("mmvit.eval")

Kind = Literal["video", "image"]
# Source types by the kinds they can yield; any other type (webdataset, user sources) may yield both and is
# kept for every pass, its examples filtered by meta["kind"].
IMAGE_SOURCES = ("image_list", "image_folder")
VIDEO_SOURCES = ("video_list",)
# Types that take a ``views`` entry (video_list, webdataset); a source that already has one is updated too.
VIEW_SOURCES = ("video_list", "webdataset")

LoaderFn = Callable[..., tuple[Any, Any]]


@dataclasses.dataclass
class EvalSettings:
    """What to evaluate; the command line of tools/eval_video.py fills it.

    Attributes:
        split: data split (``data.splits.<split>`` or the top-level ``data.sources``).
        view_sets: view sets for videos.
        token_budgets: tokens per example, one pass each; ``None``: see ``resolutions``.
        resolutions: side lengths in pixels, one pass each, when no token budgets are given; with neither,
            one pass at the split's configured resolution.
        aggregate: how views combine (``mean_prob``, ``mean_logit``, ``max_prob``).
        kinds: ``video`` and/or ``image``.
        video_backend: ``decord`` or ``pyav``; ``None`` keeps the config's.
        patch_size: patch size for every batch; ``None`` keeps the config's (the first of several).
        seed: loader seed (evaluation is deterministic; it only matters for sources that use it).
        max_batches: per pass and rank (smoke runs; views of cut-off videos will be missing).
        data_overrides: extra ``data:`` keys for evaluation (e.g. ``num_workers``).
    """

    split: str = "test"
    view_sets: list[ViewSet] = dataclasses.field(default_factory=lambda: parse_view_sets("4x3"))
    token_budgets: list[int] | None = None
    resolutions: list[float] | None = None
    aggregate: Method = "mean_prob"
    kinds: tuple[str, ...] = ("video",)
    video_backend: str | None = None
    patch_size: Any = None
    seed: int = 0
    max_batches: int | None = None
    data_overrides: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in self.kinds:
            if k not in ("video", "image"):
                raise ValueError(f"kinds must be video and/or image, got {k!r}")
        if self.token_budgets is not None and self.resolutions is not None:
            raise ValueError("give token budgets or resolutions, not both")
        if self.aggregate not in ("mean_prob", "mean_logit", "max_prob"):
            raise ValueError(f"aggregate must be mean_prob, mean_logit or max_prob, got {self.aggregate!r}")


@dataclasses.dataclass(frozen=True)
class EvalPass:
    """One loader over the split: a kind, its view set (videos) and a compute level.

    ``setting`` is ``token_budget`` (``value`` tokens per example), ``resolution`` (``value`` px side) or
    ``config`` (the split's own resolution; ``value`` is ``None``).
    """

    kind: Kind
    views: ViewSet | None
    setting: Literal["token_budget", "resolution", "config"]
    value: float | None

    @property
    def views_name(self) -> str:
        return self.views.name if self.views is not None else "full"

    @property
    def expected_views(self) -> int:
        return self.views.count if self.kind == "video" and self.views is not None else 1

    @property
    def level(self) -> str:
        """The compute level as a short label: ``128 tok``, ``224 px`` or ``config``."""
        if self.setting == "token_budget":
            return f"{int(self.value)} tok"
        if self.setting == "resolution":
            return f"{self.value:g} px"
        return "config"

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.views_name}/{self.level}"

    def stage(self, patch_size: Any = None) -> dict | None:
        stage: dict = {}
        if self.setting == "token_budget":
            stage["token_budget"] = int(self.value)
        elif self.setting == "resolution":
            stage["resolution"] = {"type": "fixed", "mode": "side", "values": [float(self.value)]}
        if patch_size is not None:
            stage["patch_size"] = patch_size
        return stage or None


def split_sources(data_cfg: dict, split: str) -> list[dict]:
    """The source entries a split reads (``data.splits.<split>.sources``, else ``data.sources``)."""
    splits = data_cfg.get("splits") or {}
    sources = (splits.get(split) or {}).get("sources")
    if sources is None:
        sources = data_cfg.get("sources")
    if not sources:
        raise ValueError(f"data: no sources for split {split!r}; give data.sources or data.splits.{split}.sources"
                         f" (splits in the config: {sorted(splits)})")
    return [dict(s) for s in sources]


def source_kinds(entry: dict) -> set[str]:
    t = entry.get("type")
    if t in IMAGE_SOURCES:
        return {"image"}
    if t in VIDEO_SOURCES:
        return {"video"}
    return {"image", "video"}


def plan_passes(settings: EvalSettings, data_cfg: dict) -> list[EvalPass]:
    """Every pass, videos first; kinds that no source of the split can yield are left out (logged)."""
    available = set().union(*(source_kinds(s) for s in split_sources(data_cfg, settings.split)))
    if settings.token_budgets:
        levels = [("token_budget", float(b)) for b in settings.token_budgets]
    elif settings.resolutions:
        levels = [("resolution", float(r)) for r in settings.resolutions]
    else:
        levels = [("config", None)]
    passes: list[EvalPass] = []
    for kind in ("video", "image"):
        if kind not in settings.kinds:
            continue
        if kind not in available:
            log.warning("split %r has no %s sources: %s evaluation skipped", settings.split, kind, kind)
            continue
        view_sets = settings.view_sets if kind == "video" else [None]
        for vs in view_sets:
            for setting, value in levels:
                passes.append(EvalPass(kind, vs, setting, value))  # type: ignore[arg-type]
    if not passes:
        raise ValueError(f"nothing to evaluate: split {settings.split!r} has sources for {sorted(available)}, "
                         f"asked for {list(settings.kinds)}")
    return passes


def pass_data_config(data_cfg: dict, p: EvalPass, settings: EvalSettings) -> dict:
    """The ``data:`` dict for one pass: the split's sources that can yield ``p.kind``, with ``p``'s views
    on video sources, the backend, and a ``seq_len`` that holds the pass's token budget."""
    data = copy.deepcopy(dict(data_cfg))
    splits = dict(data.get("splits") or {})
    split_cfg = dict(splits.get(settings.split) or {})
    views = (p.views.source_views() if p.kind == "video" and p.views is not None
             else {"temporal": 1, "spatial": 0, "full_frame": True})
    sources = []
    for entry in split_sources(data_cfg, settings.split):
        if p.kind not in source_kinds(entry):
            continue
        if entry.get("type") in VIEW_SOURCES or "views" in entry:
            entry["views"] = dict(views)
        sources.append(entry)
    split_cfg["sources"] = sources
    split_cfg["persistent_workers"] = False  # each pass has its own loader: let its workers go when it ends
    split_cfg.update(copy.deepcopy(settings.data_overrides))
    if settings.video_backend is not None:
        split_cfg["video_backend"] = settings.video_backend
    if p.setting == "token_budget":
        # One example of the budget must fit a row, and max_tokens must not cap it below the budget.
        seq_len = int(split_cfg.get("seq_len", data.get("seq_len", 256)))
        split_cfg["seq_len"] = max(seq_len, int(p.value))
        max_tokens = split_cfg.get("max_tokens", data.get("max_tokens"))
        if max_tokens is not None:
            split_cfg["max_tokens"] = max(int(max_tokens), int(p.value))
    splits[settings.split] = split_cfg
    data["splits"] = splits
    return data


def _close(loader: Any, control: Any) -> None:
    for obj in (control, loader):
        close = getattr(obj, "close", None)
        if callable(close):
            close()


def evaluate_rank(model: torch.nn.Module, cfg: dict, settings: EvalSettings, *, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = "cpu", passes: list[EvalPass] | None = None,
                  loader_fn: LoaderFn | None = None) -> list[RankOutput]:
    """Run every pass over this rank's share of the split; one :class:`RankOutput` per pass, in order.

    Args:
        model: the classifier (``model(batch) -> [E, K]``).
        cfg: the full config (its ``data`` section is read).
        settings: what to evaluate.
        rank, world_size: this rank's share (the loader gives each sample to exactly one rank).
        device: where the model runs.
        passes: default :func:`plan_passes`.
        loader_fn: ``build_loader``-compatible callable (default ``mmvit.data.build_loader``).
    """
    if loader_fn is None:
        from mmvit.data import build_loader as loader_fn
    data_cfg = dict(cfg["data"])
    passes = plan_passes(settings, data_cfg) if passes is None else passes
    outputs = []
    for p in passes:
        loader, control = loader_fn(pass_data_config(data_cfg, p, settings), split=settings.split, rank=rank,
                                    world_size=world_size, seed=settings.seed,
                                    stage=p.stage(settings.patch_size), train=False)
        try:
            out = run_eval(model, loader, device=device, kinds=[p.kind], max_batches=settings.max_batches)
        finally:
            _close(loader, control)
        stats = getattr(control, "stats", None)
        if callable(stats):
            out.bad = {str(k): int(v) for k, v in (stats().get("bad") or {}).items()}
            if out.bad:
                log.warning("rank %d, pass %s: bad samples skipped: %s", rank, p.name, out.bad)
        log.info("%s: %d views in %.1f s", p.name, out.throughput.examples, out.throughput.wall_s)
        outputs.append(out)
    return outputs


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
    """Names of the classes, if known: ``path`` (one per line), a source's ``classes`` list or file, or a
    ``manifest.json`` with ``class_names`` beside a source's list (as tools/make_demo_data.py writes)."""
    def fits(names: list[str] | None) -> list[str] | None:
        return names if names and (num_classes is None or len(names) == num_classes) else None

    if path is not None:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    try:
        sources = split_sources(dict(cfg.get("data") or {}), split)
    except ValueError:
        return None
    for s in sources:
        classes = s.get("classes")
        if isinstance(classes, (list, tuple)) and fits([str(c) for c in classes]):
            return [str(c) for c in classes]
        if isinstance(classes, str) and os.path.isfile(classes):
            with open(classes) as f:
                names = fits([line.strip() for line in f if line.strip()])
            if names:
                return names
        for key in ("list", "root", "index"):
            where = s.get(key)
            if not isinstance(where, str):
                continue
            folder = where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))
            manifest = os.path.join(folder, "manifest.json")
            if os.path.isfile(manifest):
                try:
                    with open(manifest) as f:
                        names = fits(json.load(f).get("class_names"))
                except (OSError, ValueError, AttributeError):
                    names = None
                if names:
                    return [str(n) for n in names]
    return None

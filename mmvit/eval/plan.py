"""The evaluation plan: passes over (kind, view set, compute level) and the data config of each.

NaViT (Dehghani et al. 2023) serves many compute levels with one model: the same weights are evaluated at
several token budgets (tokens per example) or resolutions. Videos are evaluated under each view set
(``mmvit.eval.views``: PySlowFast's clips x crops, NaViT's full frame), images once per compute level.
Each combination is one *pass*: a fresh deterministic loader for the split (``mmvit.data.build_loader``,
``train=False``) whose sources that can yield the pass's kind get its views and whose stage sets the budget
or resolution. What a source can yield and whether it takes views is declared by its class
(``Source.kinds``, ``Source.has_views``), so user-registered sources are planned like built-in ones.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Literal

from mmvit.eval.aggregate import Method
from mmvit.eval.views import ViewSet, parse_view_sets

log = logging.getLogger("mmvit.eval")

Kind = Literal["video", "image"]


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
    """The source entries a split reads, as the loader resolves them (``data.splits.<split>`` over ``data``)."""
    from mmvit.data import resolve_data_config

    return [dict(s) for s in resolve_data_config(data_cfg, split).sources]


def source_class(entry: dict):
    """The registered class of a source entry (its declarations ``kinds`` and ``has_views``)."""
    import mmvit.data  # noqa: F401  (registers the built-in sources)
    from mmvit.registry import DATASETS

    return DATASETS.get(entry["type"])


def source_kinds(entry: dict) -> set[str]:
    return set(source_class(entry).kinds)


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
        if source_class(entry).has_views:
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



"""The ``data:`` section of a config as typed dataclasses, and the curriculum stage the workers follow.

Keys that apply to every split sit at the top of ``data:``; ``splits: {name: {...}}`` overrides any of them
for one split (typically ``sources``). Unknown keys raise and name the nearest valid key, at every level.

    data:
      seq_len: 256
      batch_rows: 8
      patch_sizes: [16]
      resolution: {type: uniform, min: 64, max: 256}
      splits:
        train: {sources: [{type: video_list, list: data/train.csv, root: data/videos, weight: 2},
                          {type: image_folder, root: data/images}]}
        val:   {sources: [{type: video_list, list: data/val.csv, views: {temporal: 4, spatial: 3}}]}
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

from mmvit.config import from_dict
from mmvit.data.augment import AugmentConfig
from mmvit.data.resolution import ResolutionConfig
from mmvit.registry import nearest
from mmvit.token_drop import make_rate_fn

PatchSize = tuple[int, int, int]


@dataclasses.dataclass
class DataConfig:
    """Everything the loader needs; see docs/data.md for each key."""

    sources: list[dict] = dataclasses.field(default_factory=list)
    splits: dict[str, dict] = dataclasses.field(default_factory=dict)
    # Packing: every batch is exactly [batch_rows, seq_len] tokens.
    seq_len: int = 256
    batch_rows: int = 8
    max_per_row: int | None = None         # NaViT's E_max: examples per row (None: no cap)
    pack_buffer: int = 64                  # examples planned ahead per worker; leftovers wait here
    batches_per_epoch: int | None = None   # per rank; None: estimated from the data size (training)
    # Patches and sizes.
    patch_sizes: list = dataclasses.field(default_factory=lambda: [16])  # ints p or [pt, ph, pw]; one per batch
    tubelet: int = 1                       # pt for int patch sizes (frames per tubelet)
    resolution: dict = dataclasses.field(default_factory=lambda: {"type": "uniform", "min": 64, "max": 256})
    max_tokens: int | None = None          # per example after resizing (before dropping); None: seq_len
    # Video frames.
    frames: int = 8
    sampling: Literal["uniform", "clip"] = "uniform"
    frame_interval: int = 1
    video_backend: Literal["decord", "pyav", "auto"] = "auto"
    decode_threads: int = 1
    decode_timeout_s: float | None = 30.0
    decode_isolation: Literal["none", "process", "auto"] = "auto"
    max_image_pixels: int = 64_000_000
    # Augmentation, normalization, token dropping (the last two only in training).
    augment: dict = dataclasses.field(default_factory=dict)
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = dataclasses.field(default_factory=lambda: [0.229, 0.224, 0.225])
    drop_rate: Any = None                  # float, {type: constant|beta|resolution, ...} or None
    num_classes: int | None = None         # labels outside [0, num_classes) are bad samples
    # Workers.
    num_workers: int = 2
    persistent_workers: bool = True
    prefetch_factor: int = 2
    pin_memory: bool = False
    start_method: Literal["fork", "spawn", "forkserver"] | None = None  # None: the platform default
    # Bad input and safety.
    max_bad_fraction: float = 0.05
    bad_fraction_min_samples: int = 50
    allow_pipe_urls: bool = False
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        for key in ("seq_len", "batch_rows", "pack_buffer", "frames", "frame_interval", "tubelet", "decode_threads"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.sampling not in ("uniform", "clip"):
            raise ValueError(f"data.sampling must be uniform or clip, got {self.sampling!r}")
        if self.video_backend not in ("decord", "pyav", "auto"):
            raise ValueError(f"data.video_backend must be decord, pyav or auto, got {self.video_backend!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("data.mean and data.std need 3 values (std > 0)")
        if not self.patch_sizes:
            raise ValueError("data.patch_sizes needs at least one patch size")
        self.patch_list()  # validates
        ResolutionConfig.parse(self.resolution)
        self.augment_config()
        make_rate_fn(self.drop_rate)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"data.max_tokens must be >= 1, got {self.max_tokens}")
        for i, src in enumerate(self.sources):
            if not isinstance(src, dict) or "type" not in src:
                raise ValueError(f"data.sources[{i}] must be a mapping with a 'type', got {src!r}")

    def patch_list(self) -> list[PatchSize]:
        return [as_patch(p, self.tubelet) for p in self.patch_sizes]

    def augment_config(self) -> AugmentConfig:
        return from_dict(AugmentConfig, self.augment, "data.augment")

    @property
    def token_cap(self) -> int:
        """Tokens one example may have after resizing: ``min(max_tokens, seq_len)``."""
        return min(self.max_tokens or self.seq_len, self.seq_len)


def as_patch(p: int | list | tuple, tubelet: int = 1) -> PatchSize:
    """``p`` -> ``(tubelet, p, p)``; ``[ph, pw]`` -> ``(tubelet, ph, pw)``; ``[pt, ph, pw]`` as is."""
    if isinstance(p, int):
        ps = (tubelet, p, p)
    else:
        ps = tuple(int(v) for v in p)
        ps = (tubelet, *ps) if len(ps) == 2 else ps
    if len(ps) != 3 or min(ps) < 1:
        raise ValueError(f"a patch size is an int, [ph, pw] or [pt, ph, pw] of positive ints, got {p!r}")
    return ps  # type: ignore[return-value]


# Names other frameworks use for our keys: a clear message instead of a bare "unknown key".
_RENAMED = {
    "clip_len": "mmaction2's clip_len is 'frames' here (frames per clip, with sampling: clip)",
    "num_frames": "frames per clip is 'frames' here",
    "batch_size": "a batch is [batch_rows, seq_len] tokens here: set batch_rows and seq_len",
}


def resolve_data_config(data_cfg: dict | DataConfig, split: str) -> DataConfig:
    """The config for one split: the top level with ``splits[split]`` merged over it."""
    if isinstance(data_cfg, DataConfig):
        data_cfg = dataclasses.asdict(data_cfg)
    base = copy.deepcopy(dict(data_cfg or {}))
    splits = base.pop("splits", None) or {}
    names = [f.name for f in dataclasses.fields(DataConfig)]
    for key in base:
        if key in _RENAMED:
            raise KeyError(f"data: unknown key {key!r}: {_RENAMED[key]}")
        if key not in names:
            raise KeyError(f"data: unknown key {key!r}{nearest(key, names)}; valid keys: {names}")
    if split in splits:
        override = dict(splits[split] or {})
        for key in override:
            if key in _RENAMED:
                raise KeyError(f"data.splits.{split}: unknown key {key!r}: {_RENAMED[key]}")
            if key not in names or key == "splits":
                raise KeyError(f"data.splits.{split}: unknown key {key!r}{nearest(key, names)}; valid keys: {names}")
        base.update(copy.deepcopy(override))
    cfg = from_dict(DataConfig, base, "data")
    if not cfg.sources:
        known = sorted(splits)
        raise ValueError(f"data: no sources for split {split!r}; give data.sources or data.splits.{split}.sources"
                         + (f" (splits in the config: {known})" if known else ""))
    return cfg


@dataclasses.dataclass
class Stage:
    """What the curriculum may change between batches without restarting the workers."""

    resolution: ResolutionConfig
    frames: int
    patch_size: PatchSize | None = None   # None: drawn per batch from data.patch_sizes
    token_budget: int | None = None       # tokens per example (over all its frames); overrides resolution

    KEYS = ("resolution", "frames", "patch_size", "token_budget")


def make_stage(cfg: DataConfig, stage: dict | None) -> Stage:
    """A stage dict (keys of :attr:`Stage.KEYS`) over the config's defaults; unknown keys raise."""
    stage = dict(stage or {})
    for key in stage:
        if key not in Stage.KEYS:
            raise KeyError(f"stage: unknown key {key!r}{nearest(key, Stage.KEYS)}; valid keys: {list(Stage.KEYS)}")
    if stage.get("resolution") is not None and stage.get("token_budget") is not None:
        raise ValueError("a stage gives either resolution or token_budget, not both")
    frames = int(stage.get("frames") or cfg.frames)
    patch = stage.get("patch_size")
    patch = as_patch(patch, cfg.tubelet) if patch is not None else None
    budget = stage.get("token_budget")
    for ps in [patch] if patch is not None else cfg.patch_list():
        if frames % ps[0]:
            raise ValueError(f"frames={frames} is not a multiple of the tubelet length {ps[0]} of patch size {ps} "
                             f"(the frames past the last whole tubelet would be decoded and thrown away)")
        if frames // ps[0] > cfg.token_cap:
            raise ValueError(f"frames={frames} at tubelet {ps[0]} needs {frames // ps[0]} tokens per example, "
                             f"more than the cap {cfg.token_cap} (seq_len / max_tokens)")
    if budget is not None and int(budget) < 1:
        raise ValueError(f"stage token_budget must be >= 1, got {budget}")
    return Stage(resolution=ResolutionConfig.parse(stage.get("resolution") or cfg.resolution), frames=frames,
                 patch_size=patch, token_budget=None if budget is None else int(budget))

"""The ``data:`` section of a config as a typed dataclass, resolved per split.

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
from typing import ClassVar, Literal

from mmvit.data.augment import AugmentConfig
from mmvit.data.resolution import ResolutionConfig
from mmvit.data.stage import Stage, make_stage
from mmvit.packing import PatchSize, as_patch_size
from mmvit.token_drop import DropRateConfig, make_rate_fn
from mmvit.typed import check_keys, from_dict, num


@dataclasses.dataclass
class DataConfig:
    """Everything the loader needs; see docs/data.md for each key."""

    # Names other frameworks use for our keys: a clear message instead of a bare "unknown key".
    RENAMED: ClassVar[dict[str, str]] = {
        "clip_len": "mmaction2's clip_len is 'frames' here (frames per clip, with sampling: clip)",
        "num_frames": "frames per clip is 'frames' here",
        "batch_size": "a batch is [batch_rows, seq_len] tokens here: set batch_rows and seq_len",
    }

    sources: list[dict] = dataclasses.field(default_factory=list)
    splits: dict[str, dict] = dataclasses.field(default_factory=dict)
    # Packing: every batch is exactly [batch_rows, seq_len] tokens.
    seq_len: int = num(256, ge=1)
    batch_rows: int = num(8, ge=1)
    max_per_row: int | None = num(None, ge=1)  # NaViT's E_max: examples per row (None: no cap)
    pack_buffer: int = num(64, ge=1)       # examples planned ahead per worker; leftovers wait here
    batches_per_epoch: int | None = num(None, ge=1)  # per rank; None: estimated from the data size (training)
    # Patches and sizes.
    patch_sizes: list[int | list[int]] = dataclasses.field(default_factory=lambda: [16])  # one per batch
    tubelet: int = num(1, ge=1)            # pt for int patch sizes (frames per tubelet)
    resolution: ResolutionConfig | float = dataclasses.field(default_factory=ResolutionConfig)
    max_tokens: int | None = num(None, ge=1)  # per example after resizing (before dropping); None: seq_len
    # Video frames.
    frames: int = num(8, ge=1)
    sampling: Literal["uniform", "clip"] = "uniform"
    frame_interval: int = num(1, ge=1)
    video_backend: Literal["decord", "pyav", "auto"] = "auto"
    decode_threads: int = num(1, ge=1)
    decode_timeout_s: float | None = num(30.0, gt=0)
    decode_isolation: Literal["none", "process", "auto"] = "auto"
    max_image_pixels: int = num(64_000_000, ge=1)
    # Training: decoded samples kept in memory across passes, per loader worker, up to this many MiB (0: off);
    # for data that fits (mmvit/data/cache.py). Videos are then decoded whole at their native size.
    cache_mb: float = num(0.0, ge=0)
    # Augmentation, normalization, token dropping (the last two only in training).
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = dataclasses.field(default_factory=lambda: [0.229, 0.224, 0.225])
    drop_rate: DropRateConfig | float | None = None  # a constant rate, {type: constant|beta|resolution, ...}
    num_classes: int | None = num(None, ge=1)  # labels outside [0, num_classes) are bad samples
    # Masked pretraining (mmvit/pretrain): a MaskConfig, filled in by the trainer from objective.mask (mae,
    # jepa). Each batch is then two packings of the same examples: the visible tokens in [batch_rows, seq_len]
    # and all tokens in [full_batch_rows, full_seq_len] (the decoder's / target encoder's).
    mask: dict | None = None
    full_seq_len: int | None = num(None, ge=1)     # None: seq_len
    full_batch_rows: int | None = num(None, ge=1)  # needed with a mask: ~ batch_rows*seq_len/full_seq_len/(1-ratio)
    # Lengthen the full rows per curriculum stage (never below full_seq_len, at most twice it) so that the two
    # packings' capacities stand as the stage's visible and all tokens do: the visible share moves with the
    # stage (clips and images are masked differently and their token shares change with frames and sizes),
    # and fixed capacities then leave one packing padded by the mismatch. Fixed within a stage; without a mask
    # (classification) there is no full packing and the key has no effect.
    fit_full_rows: bool = False
    # Workers.
    num_workers: int = num(2, ge=0)
    persistent_workers: bool = True
    prefetch_factor: int = num(2, ge=1)
    pin_memory: bool = False
    start_method: Literal["fork", "spawn", "forkserver"] | None = None  # None: the platform default
    # Bad input and safety.
    max_bad_fraction: float = num(0.05, ge=0.0, le=1.0)
    bad_fraction_min_samples: int = num(50, ge=0)
    allow_pipe_urls: bool = False
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        self.resolution = ResolutionConfig.parse(self.resolution)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("data.mean and data.std need 3 values (std > 0)")
        if not self.patch_sizes:
            raise ValueError("data.patch_sizes needs at least one patch size")
        self.patch_list()  # validates
        make_rate_fn(self.drop_rate, "data.drop_rate")
        if self.mask is not None:
            from mmvit.pretrain.masking import MaskConfig

            MaskConfig.from_dict(self.mask)  # a bad mask raises here, not in a loader worker
            if make_rate_fn(self.drop_rate) is not None:
                raise ValueError("data.drop_rate with a mask (masked pretraining): the mask already chooses the "
                                 "tokens the encoder sees; remove drop_rate")
            if self.full_seq_len is None:
                self.full_seq_len = self.seq_len
            if self.full_batch_rows is None:
                raise ValueError(f"data.full_batch_rows is not set: masked pretraining packs all tokens of a batch's "
                                 f"examples into [full_batch_rows, full_seq_len={self.full_seq_len}]; about "
                                 f"batch_rows * seq_len / full_seq_len / (1 - mask ratio) rows, e.g. "
                                 f"{-(-self.batch_rows * self.seq_len * 4 // self.full_seq_len)} at ratio 0.75")
        for i, src in enumerate(self.sources):
            if not isinstance(src, dict) or "type" not in src:
                raise ValueError(f"data.sources[{i}] must be a mapping with a 'type', got {src!r}")

    def patch_list(self) -> list[PatchSize]:
        return [as_patch_size(p, self.tubelet) for p in self.patch_sizes]

    @property
    def masked(self) -> bool:
        """Whether batches are masked-pretraining pairs (a mask is set)."""
        return self.mask is not None

    @property
    def token_cap(self) -> int:
        """Tokens one example may have after resizing: ``min(max_tokens, seq_len)``; with a mask all its
        tokens go into a full row, ``min(max_tokens, full_seq_len)``."""
        cap = self.full_seq_len if self.masked and self.full_seq_len else self.seq_len
        return min(self.max_tokens or cap, cap)

    def full_stage(self) -> Stage:
        """The stage of the data section's own shape (what curricula call ``full``)."""
        return make_stage(self, None)


def resolve_data_config(data_cfg: dict | DataConfig, split: str) -> DataConfig:
    """The config for one split: the top level with ``splits[split]`` merged over it."""
    if isinstance(data_cfg, DataConfig):
        data_cfg = dataclasses.asdict(data_cfg)
    base = copy.deepcopy(dict(data_cfg or {}))
    splits = base.pop("splits", None) or {}
    check_keys(DataConfig, base, "data")
    if split in splits:
        override = dict(splits[split] or {})
        check_keys(DataConfig, override, f"data.splits.{split}", exclude=("splits",))
        base.update(copy.deepcopy(override))
    cfg = from_dict(DataConfig, base, "data")
    if not cfg.sources:
        known = sorted(splits)
        raise ValueError(f"data: no sources for split {split!r}; give data.sources or data.splits.{split}.sources"
                         + (f" (splits in the config: {known})" if known else ""))
    return cfg

"""The data pipeline: sources, decoders, resolution sampling and packing in the loader workers.

Public interface (see docs/data.md):
- ``build_loader(data_cfg, *, split, rank, world_size, seed, stage=None, train) -> (loader, control)``
- ``read_video(path, indices, backend) -> uint8 [T, H, W, 3]``, ``read_image(path) -> uint8 [H, W, 3]``
- ``fit_to_budget(h, w, patch, max_tokens) -> (h2, w2)``

Importing this package loads neither decord nor PyAV; they load on first use.
"""

from mmvit.data import sources as _sources  # noqa: F401  (registers the DATASETS entries)
from mmvit.data.config import DataConfig, resolve_data_config
from mmvit.data.control import DataControl
from mmvit.data.errors import CAUSES, BadSample, TooManyBadSamples
from mmvit.data.frames import sample_frames
from mmvit.data.loader import PackedLoader, build_loader
from mmvit.data.readers import read_image, read_video
from mmvit.data.resolution import ResolutionConfig, fit_to_budget
from mmvit.data.stage import Stage, make_stage, plan_tokens
from mmvit.data.stream import StreamBatch

__all__ = [
    "CAUSES",
    "BadSample",
    "DataConfig",
    "DataControl",
    "PackedLoader",
    "ResolutionConfig",
    "Stage",
    "StreamBatch",
    "TooManyBadSamples",
    "build_loader",
    "fit_to_budget",
    "make_stage",
    "plan_tokens",
    "read_image",
    "read_video",
    "resolve_data_config",
    "sample_frames",
]

"""Data sources (registry ``DATASETS``): ``image_folder``, ``image_list``, ``video_list``, ``webdataset``,
``synthetic``."""

from mmvit.data.sources.base import (
    IndexedSource,
    Item,
    Source,
    SourceContext,
    Stream,
    ViewsConfig,
)
from mmvit.data.sources.lists import ImageFolder, ImageList, VideoList
from mmvit.data.sources.synthetic import Synthetic
from mmvit.data.sources.webdataset import WebDataset

__all__ = [
    "ImageFolder",
    "ImageList",
    "IndexedSource",
    "Item",
    "Source",
    "SourceContext",
    "Stream",
    "Synthetic",
    "VideoList",
    "ViewsConfig",
    "WebDataset",
    "build_sources",
]


def build_sources(specs: list[dict], ctx: SourceContext) -> list[Source]:
    """Build each ``{type, ...}`` entry through the ``DATASETS`` registry (unknown keys raise)."""
    from mmvit.registry import DATASETS

    return [DATASETS.build(dict(spec), ctx=ctx) for spec in specs]

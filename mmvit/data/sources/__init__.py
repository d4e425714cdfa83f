"""Data sources (registry ``DATASETS``): ``image_folder``, ``image_list``, ``video_list``, ``jsonl``, ``ssv2``,
``ucf101``, ``hmdb51``, ``webdataset``, ``synthetic``."""

from mmvit.data.sources.base import (
    IndexedSource,
    Item,
    Source,
    SourceContext,
    Stream,
    ViewsConfig,
)
from mmvit.data.sources.lists import (
    HMDB51,
    UCF101,
    AnnotatedSource,
    Files,
    ImageFolder,
    ImageList,
    JsonLines,
    SomethingSomethingV2,
    VideoList,
)
from mmvit.data.sources.synthetic import Synthetic
from mmvit.data.sources.webdataset import WebDataset

__all__ = [
    "HMDB51",
    "UCF101",
    "AnnotatedSource",
    "Files",
    "JsonLines",
    "SomethingSomethingV2",
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


def build_sources(specs: list[dict], ctx: SourceContext, tables=None) -> list[Source]:
    """Build each ``{type, ..., task}`` entry through the ``DATASETS`` registry (unknown keys raise) and, with
    ``tables`` (the run's ``ClassTables``), bind each source to its task's table."""
    from mmvit.registry import DATASETS

    sources = []
    for spec in specs:
        spec = dict(spec)
        task = spec.pop("task", None)
        source = DATASETS.build(spec, ctx=ctx)
        source.task = None if task is None else str(task)
        if tables is not None:
            source.task = tables.tasks[tables.task_index(source.task)]
            source.bind(tables[source.task])
        sources.append(source)
    return sources

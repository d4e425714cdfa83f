"""Scan a split up front and list every bad sample with its reason (the library behind
tools/check_data.py).

Each sample goes through the same checks as in the loader: list/label problems, the header or container
probe, and a decode (the whole image; for a video the frames an evaluation clip would use, or every frame
with ``all_frames``), all under the configured time limit and decode isolation.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator

from mmvit.data.config import DataConfig, resolve_data_config
from mmvit.data.errors import BadSample
from mmvit.data.frames import sample_frames
from mmvit.data.readers.image import decode_image, probe_image
from mmvit.data.readers.video import VideoDecoder
from mmvit.data.sources import SourceContext, build_sources
from mmvit.data.sources.base import Item


@dataclasses.dataclass
class ScanReport:
    good: int = 0
    bad: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (path, cause, detail)
    per_class: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)  # task -> label -> good

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(cause for _, cause, _ in self.bad))


def check_item(item: Item, cfg: DataConfig, decoder: VideoDecoder, all_frames: bool = False) -> None:
    """Raise :class:`BadSample` if the loader would skip ``item``."""
    if item.error is not None:
        raise item.error
    if item.label is None:
        raise BadSample("bad_label", item.path, "no label")
    if item.kind == "image":
        probe_image(item.src, item.path, cfg.max_image_pixels, timeout_s=cfg.decode_timeout_s)
        decode_image(item.src, item.path, cfg.max_image_pixels, timeout_s=cfg.decode_timeout_s)
        return
    info = decoder.probe(item.src, item.path, key=item.path)
    n = int(info["frames"])
    indices = list(range(n)) if all_frames else sample_frames(n, cfg.frames, sampling=cfg.sampling,
                                                              interval=cfg.frame_interval)[0]
    decoder.read(item.src, item.path, indices, info)


def iter_items(cfg: DataConfig, tables=None) -> Iterator[tuple[str, Item]]:
    """``(task, item)`` of every sample of the split's sources, labels mapped through ``tables``."""
    ctx = SourceContext(allow_outside_root=cfg.allow_outside_root, allow_pipe_urls=cfg.allow_pipe_urls,
                        read_timeout_s=cfg.decode_timeout_s)
    for source in build_sources(cfg.sources, ctx, tables):
        for item in source.iter_all():
            yield source.task or "default", item


def label_counts(data_cfg: dict | DataConfig, split: str, tables=None) -> dict[str, collections.Counter]:
    """Samples per class and task of a split, from its lists alone (no decoding; listed bad entries left out)."""
    out: dict[str, collections.Counter] = {}
    for task, item in iter_items(resolve_data_config(data_cfg, split), tables):
        counter = out.setdefault(task, collections.Counter())
        if item.error is None and item.label is not None:
            counter[item.label] += 1
    return out


def scan(data_cfg: dict | DataConfig, split: str, *, all_frames: bool = False, limit: int | None = None,
         report: Callable[[str], None] | None = print, tables=None) -> ScanReport:
    """Check every sample of ``split`` (labels through the run's ``tables``); ``report`` gets one line per
    bad sample."""
    cfg = resolve_data_config(data_cfg, split)
    decoder = VideoDecoder(cfg.video_backend, cfg.decode_threads, cfg.decode_timeout_s, cfg.decode_isolation)
    out = ScanReport()
    try:
        for n, (task, item) in enumerate(iter_items(cfg, tables)):
            if limit is not None and n >= limit:
                break
            try:
                check_item(item, cfg, decoder, all_frames)
                out.good += 1
                out.per_class.setdefault(task, collections.Counter())[item.label] += 1
            except BadSample as e:
                out.bad.append((e.path, e.cause, e.detail))
                if report is not None:
                    report(f"BAD {e.cause}: {e.path}{f' ({e.detail})' if e.detail else ''}")
    finally:
        decoder.close()
    return out

"""Writing webdataset shards from a list file (the library behind tools/make_shards.py).

Each sample keeps the original encoded bytes (``KEY.<ext>``, no re-encoding), its label (``KEY.cls``) and a
JSON sidecar (``KEY.json``: width, height, frames, fps, the source path) so that a loader can plan packing
without decoding. Files that cannot be read (images are decoded, videos probed: container, stream and every
packet) are left out and reported with their reason, as the loader would skip them. Labels are written as
given; their range is checked by the loader (``num_classes``). An index file next to the shards
(``<prefix>.json``: shard names and the sample count) sizes training epochs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable

import numpy as np

from mmvit.data.errors import BadSample
from mmvit.data.readers.image import decode_image, probe_image
from mmvit.data.readers.video import VideoDecoder
from mmvit.data.sources.base import SourceContext
from mmvit.data.sources.annotations import parse_list
from mmvit.data.sources.lists import ImageList, VideoList, kind_of


@dataclasses.dataclass
class ShardSample:
    """One sample as a shard stores it: ``KEY.<ext>`` (the encoded file), ``KEY.cls``, ``KEY.json``."""

    key: str            # no dots (webdataset splits member names on the first dot)
    ext: str            # png, jpg, mp4, webm, ...
    data: bytes
    label: int | str
    sidecar: dict       # width, height, frames, fps (the loader plans packing from these), anything else


def write_samples(pattern: str, samples: Iterable[ShardSample], *, maxcount: int = 1000, maxsize: float = 1e9,
                  mtime: float | None = None) -> int:
    """Write ``samples`` into ``pattern`` shards (``webdataset.ShardWriter``); returns the number of shards.
    ``mtime`` fixes the tar members' times, so that the same samples give byte-identical shards."""
    import webdataset as wds

    kwargs = {} if mtime is None else {"mtime": mtime}
    with wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0, **kwargs) as sink:
        for sample in samples:
            if "." in sample.key:
                raise ValueError(f"shard key {sample.key!r} contains a dot")
            sink.write({"__key__": sample.key, sample.ext: sample.data, "cls": str(sample.label).encode(),
                        "json": json.dumps(sample.sidecar, sort_keys=True).encode()})
        return sink.shard  # ShardWriter counts the shard it opened last (one, even if empty)


def write_shards(list_file: str, pattern: str, *, root: str | None = None, maxcount: int = 1000,
                 maxsize: float = 1e9, shuffle: bool = False, seed: int = 0, classes: list[str] | str | None = None,
                 allow_outside_root: bool = False, decode_timeout_s: float = 60.0,
                 report: Callable[[str], None] = print) -> dict:
    """Write ``pattern`` shards (e.g. ``out/train-%06d.tar``) from a list file; returns the index dict.

    Args:
        list_file: ``path label`` lines or CSV (see ``mmvit.data.sources.lists``); images and videos may mix.
        pattern: ``webdataset.ShardWriter`` pattern; the index is written next to the shards as
            ``<prefix>.json`` (``out/train.json`` for ``out/train-%06d.tar``; returned under ``"index"``).
        root: where relative paths resolve (default: the list file's folder).
        maxcount, maxsize: shard limits (samples, bytes).
        shuffle, seed: shuffle the samples before writing (webdataset training reads shards in order).
    """
    root = root if root is not None else os.path.dirname(os.path.abspath(list_file))
    entries = parse_list(list_file).entries
    # Reuse the list sources for the label checks and the root check; image and video lists differ only in
    # the kind of their items, which is decided here per file extension.
    images = [e for e in entries if kind_of(e.path) == "image"]
    source_cls = ImageList if len(images) == len(entries) else VideoList
    source = source_cls(list_file, root=root, classes=classes, ctx=SourceContext(allow_outside_root))
    order = np.arange(len(entries))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(entries))
    out_dir = os.path.dirname(os.path.abspath(pattern))
    os.makedirs(out_dir, exist_ok=True)
    decoder = VideoDecoder("pyav", timeout_s=decode_timeout_s, isolation="none")
    counts = {"written": 0, "skipped": 0}

    def good_samples() -> Iterable[ShardSample]:
        for n, i in enumerate(order):
            item = source.item(int(i))
            ext = os.path.splitext(item.path)[1].lower().lstrip(".")
            try:
                if item.error is not None:
                    raise item.error
                if kind_of(item.path) == "image":
                    info = probe_image(item.path, item.path)
                    decode_image(item.path, item.path)  # cheap for images: catches truncated pixel data
                    sidecar = {"width": info["width"], "height": info["height"], "frames": 1, "fps": 0.0}
                else:
                    info = decoder.probe(item.path, item.path)
                    sidecar = {k: info[k] for k in ("width", "height", "frames", "fps")}
                with open(item.path, "rb") as f:
                    data = f.read()
            except BadSample as e:
                counts["skipped"] += 1
                report(f"skip {e.path}: {e.cause}{f' ({e.detail})' if e.detail else ''}")
                continue
            counts["written"] += 1
            # The label as the list writes it (a class name or an integer): the loader maps it through the run's
            # class table, whose order the index file's "classes" declares.
            yield ShardSample(key=f"{n:09d}", ext=ext, data=data, label=source.raw[int(i)],
                              sidecar={**sidecar, "path": item.id})

    total_shards = write_samples(pattern, good_samples(), maxcount=maxcount, maxsize=maxsize)
    written, skipped = counts["written"], counts["skipped"]
    names = [os.path.basename(pattern % k) for k in range(total_shards)]
    index = {"shards": names, "num_samples": written, "skipped": skipped,
             "classes": source.classes, "list": os.path.abspath(list_file)}
    index_path = os.path.join(out_dir, os.path.basename(pattern).split("%")[0].rstrip("-_.") + ".json")
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
    index["index"] = index_path
    return index

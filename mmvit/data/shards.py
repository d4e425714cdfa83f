"""Writing webdataset shards from a list file (the library behind tools/make_shards.py).

Each sample keeps the original encoded bytes (``KEY.<ext>``, no re-encoding), its label (``KEY.cls``) and a
JSON sidecar (``KEY.json``: width, height, frames, fps, the source path) so that a loader can plan packing
without decoding. Files that cannot be read (images are decoded, videos probed: container, stream and every
packet) are left out and reported with their reason, as the loader would skip them. Labels are written as
given; their range is checked by the loader (``num_classes``). An index file next to the shards
(``<prefix>.json``: shard names and the sample count) sizes training epochs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from mmvit.data.errors import BadSample
from mmvit.data.readers.image import decode_image, probe_image
from mmvit.data.readers.video import VideoDecoder
from mmvit.data.sources.base import SourceContext
from mmvit.data.sources.lists import (
    IMAGE_EXTENSIONS,
    ImageList,
    VideoList,
    parse_list,
)


def _kind(path: str) -> str:
    return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


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
    import webdataset as wds

    root = root if root is not None else os.path.dirname(os.path.abspath(list_file))
    entries = parse_list(list_file)
    # Reuse the list sources for label parsing (names -> indices) and the root check; image and video lists
    # differ only in the kind of their items, which is decided here per file extension.
    images = [e for e in entries if _kind(e[0]) == "image"]
    source_cls = ImageList if len(images) == len(entries) else VideoList
    source = source_cls(list_file, root=root, classes=classes, ctx=SourceContext(allow_outside_root))
    order = np.arange(len(entries))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(entries))
    out_dir = os.path.dirname(os.path.abspath(pattern))
    os.makedirs(out_dir, exist_ok=True)
    decoder = VideoDecoder("pyav", timeout_s=decode_timeout_s, isolation="none")
    written, skipped = 0, 0
    with wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for n, i in enumerate(order):
            item = source.item(int(i))
            ext = os.path.splitext(item.path)[1].lower().lstrip(".")
            try:
                if item.error is not None:
                    raise item.error
                if _kind(item.path) == "image":
                    info = probe_image(item.path, item.path)
                    decode_image(item.path, item.path)  # cheap for images: catches truncated pixel data
                    sidecar = {"width": info["width"], "height": info["height"], "frames": 1, "fps": 0.0}
                else:
                    info = decoder.probe(item.path, item.path)
                    sidecar = {k: info[k] for k in ("width", "height", "frames", "fps")}
                with open(item.path, "rb") as f:
                    data = f.read()
            except BadSample as e:
                skipped += 1
                report(f"skip {e.path}: {e.cause}{f' ({e.detail})' if e.detail else ''}")
                continue
            sidecar["path"] = item.id
            key = f"{n:09d}"
            sink.write({"__key__": key, ext: data, "cls": str(item.label).encode(),
                        "json": json.dumps(sidecar).encode()})
            written += 1
        total_shards = sink.shard  # ShardWriter counts the shard it opened last (one, even if empty)
    names = [os.path.basename(pattern % k) for k in range(total_shards)]
    index = {"shards": names, "num_samples": written, "skipped": skipped,
             "classes": source.classes, "list": os.path.abspath(list_file)}
    index_path = os.path.join(out_dir, os.path.basename(pattern).split("%")[0].rstrip("-_.") + ".json")
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
    index["index"] = index_path
    return index

"""File-based sources: ``image_folder``, ``image_list`` and ``video_list``.

List files (mmaction2 style) hold one ``path label`` per line (the path may contain spaces: the label is
the last field; ``#`` starts a comment), or are CSV files:

- with a header naming a path column (``path``, ``filename``, ``video`` or ``image``) and a label column
  (``label``, ``class`` or ``label_id``);
- as Kinetics annotations come (``label,youtube_id,time_start,time_end,split``): the file name is built
  from ``path_template`` (default ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, the name the usual
  download scripts give; ``{label}/`` in front for per-class folders);
- without a header: ``path,label`` rows.

Labels are integers, or class names mapped to indices by ``classes`` (a list, or a text file with one name
per line), else by the sorted names found in the file. Relative paths resolve against ``root`` (default:
the list file's folder). A path that leaves ``root`` (``../``, or an absolute path elsewhere) is refused as
a bad sample unless ``allow_outside_root`` is set. The check is lexical (symbolic links inside ``root``
are the dataset owner's choice and are followed).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from mmvit.data.errors import BadSample
from mmvit.data.sources.base import (
    IndexedSource,
    Item,
    Kind,
    SourceContext,
    StringTable,
    ViewsConfig,
)
from mmvit.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINETICS_TEMPLATE = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
_PATH_COLUMNS = ("path", "filename", "video", "image", "file")
_LABEL_COLUMNS = ("label", "class", "label_id")

NO_LABEL = -(2**31)  # label table value of an unparseable label (the item gets a bad_label error)


def _read_classes(classes: Sequence[str] | str | None) -> list[str] | None:
    if classes is None or isinstance(classes, (list, tuple)):
        return None if classes is None else [str(c) for c in classes]
    with open(classes) as f:
        return [line.strip() for line in f if line.strip()]


def inside_root(path: str, root: str) -> bool:
    """Lexical check that ``path`` (already joined with ``root``) does not leave ``root``."""
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(path))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def parse_list(list_path: str, fmt: str = "auto", path_template: str = KINETICS_TEMPLATE
               ) -> list[tuple[str, str]]:
    """``(path, raw label)`` pairs of a list file, in file order."""
    if fmt == "auto":
        fmt = "csv" if list_path.lower().endswith(".csv") else "space"
    if fmt not in ("csv", "space"):
        raise ValueError(f"list format must be auto, csv or space, got {fmt!r}")
    with open(list_path, newline="") as f:
        if fmt == "space":
            rows = []
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(None, 1)
                rows.append((parts[0], parts[1] if len(parts) == 2 else ""))
            return rows
        reader = csv.reader(f)
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "youtube_id" in header:  # Kinetics annotation CSV
        col = {name: header.index(name) for name in header}
        out = []
        for r in rows[1:]:
            label = r[col["label"]].strip() if "label" in col and col["label"] < len(r) else ""
            try:
                fields = {"youtube_id": r[col["youtube_id"]].strip(), "label": label,
                          "time_start": int(float(r[col["time_start"]])), "time_end": int(float(r[col["time_end"]]))}
                out.append((path_template.format(**fields), label))
            except (KeyError, ValueError, IndexError):
                out.append((",".join(r), ""))  # unparseable row: reported as a bad label/path later
        return out
    path_col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if path_col is not None:
        body = rows[1:]
        return [(r[path_col].strip(), r[label_col].strip() if label_col is not None and label_col < len(r) else "")
                for r in body]
    return [(r[0].strip(), r[1].strip() if len(r) > 1 else "") for r in rows]


def labels_to_ids(raw: list[str], classes: list[str] | None) -> tuple[np.ndarray, list[str] | None]:
    """Class names map through ``classes`` (default: the sorted names in the file); integers stay as they are."""

    def is_int(r: str) -> bool:
        return r.lstrip("-").isdigit()

    if classes is None and all(is_int(r) for r in raw if r):
        return np.array([int(r) if r else NO_LABEL for r in raw], dtype=np.int64), None
    names = classes if classes is not None else sorted({r for r in raw if r})
    index = {n: i for i, n in enumerate(names)}
    ids = [index[r] if r in index else (int(r) if is_int(r) else NO_LABEL) for r in raw]
    return np.array(ids, dtype=np.int64), names


class _ListSource(IndexedSource):
    kind: Kind = "image"

    def __init__(self, entries: list[tuple[str, str]], root: str, classes: list[str] | None,
                 ctx: SourceContext, name: str, weight: float, views: dict | None):
        if weight <= 0:
            raise ValueError(f"source {name!r}: weight must be positive, got {weight}")
        self.root, self.name, self.weight = root, name, float(weight)
        self.views = ViewsConfig.parse(views)
        self.allow_outside_root = ctx.allow_outside_root
        self.paths = StringTable([p for p, _ in entries])
        self.raw_labels = StringTable([lab for _, lab in entries])
        self.labels, self.classes = labels_to_ids([lab for _, lab in entries], classes)

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, index: int) -> Item:
        rel = self.paths[index]
        path = os.path.join(self.root, rel)
        label = int(self.labels[index])
        item = Item(kind=self.kind, path=path, id=rel, label=None if label == NO_LABEL else label)
        if not self.allow_outside_root and not inside_root(path, self.root):
            item.error = BadSample("path_outside_root", path, f"leaves root {self.root} (allow_outside_root: false)")
        elif label == NO_LABEL:
            item.error = BadSample("bad_label", path, f"label {self.raw_labels[index]!r} is not a class")
        return item


@DATASETS.register("image_list")
class ImageList(_ListSource):
    """Images from a list file (``path label`` lines or CSV)."""

    kinds = ("image",)
    kind: Kind = "image"

    def __init__(self, list: str, root: str | None = None, weight: float = 1.0, format: str = "auto",
                 classes: Sequence[str] | str | None = None, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        entries = parse_list(list, format)
        root = root if root is not None else os.path.dirname(os.path.abspath(list))
        super().__init__(entries, root, _read_classes(classes), ctx or SourceContext(), name or list, weight, None)


@DATASETS.register("video_list")
class VideoList(_ListSource):
    """Videos from a list file (``path label`` lines, CSV, or a Kinetics annotation CSV)."""

    kinds = ("video",)
    has_views = True
    kind: Kind = "video"

    def __init__(self, list: str, root: str | None = None, weight: float = 1.0, format: str = "auto",
                 classes: Sequence[str] | str | None = None, path_template: str = KINETICS_TEMPLATE,
                 views: dict | None = None, name: str | None = None, *, ctx: SourceContext | None = None):
        entries = parse_list(list, format, path_template)
        root = root if root is not None else os.path.dirname(os.path.abspath(list))
        super().__init__(entries, root, _read_classes(classes), ctx or SourceContext(), name or list, weight, views)


@DATASETS.register("image_folder")
class ImageFolder(_ListSource):
    """``root/<class>/**/<image>``: one sub-folder per class, classes in sorted order (or ``classes``)."""

    kinds = ("image",)
    kind: Kind = "image"

    def __init__(self, root: str, weight: float = 1.0, classes: Sequence[str] | str | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image_folder: root {root!r} is not a directory")
        names = _read_classes(classes) or sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        exts = tuple(e.lower() for e in extensions)
        entries = []
        for c in names:
            for dirpath, dirnames, files in os.walk(os.path.join(root, c)):
                dirnames.sort()
                for fn in sorted(files):
                    if fn.lower().endswith(exts):
                        entries.append((os.path.relpath(os.path.join(dirpath, fn), root), c))
        super().__init__(entries, root, names, ctx or SourceContext(), name or root, weight, None)

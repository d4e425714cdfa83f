"""File-based sources: lists and folders (``image_list``, ``video_list``, ``image_folder``, ``jsonl``) and the
annotation formats of public datasets (``ssv2``, ``ucf101``, ``hmdb51``; parsers in annotations.py and
video_annotations.py, layouts in docs/datasets.md).

Every one of them is a list of (path, raw label) entries. Raw labels are class names or integers; they
become class indices through the run's class table of the source's task (mmvit/data/classes.py), which the
loader binds before reading (:meth:`AnnotatedSource.bind`); a source used on its own binds the table its
own labels give. Relative paths resolve against ``root`` (default: the annotation file's folder). A path
that leaves ``root`` (``../``, or an absolute path elsewhere) is refused as a bad sample unless
``allow_outside_root`` is set. The check is lexical (symbolic links inside ``root`` are the dataset
owner's choice and are followed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from mmvit.data.classes import MISSING, OUT_OF_RANGE, UNKNOWN, ClassTable, build_table, read_classes, task_configs
from mmvit.data.errors import BadSample
from mmvit.data.sources import annotations as ann
from mmvit.data.sources import video_annotations as vann
from mmvit.data.sources.base import IndexedSource, Item, Kind, SourceContext, StringTable, ViewsConfig
from mmvit.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
KINETICS_TEMPLATE = ann.KINETICS_TEMPLATE


def inside_root(path: str, root: str) -> bool:
    """Lexical check that ``path`` (already joined with ``root``) does not leave ``root``."""
    root = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.abspath(path))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def kind_of(path: str) -> Kind:
    """``image`` or ``video`` by file extension (videos for anything not an image extension)."""
    return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


class AnnotatedSource(IndexedSource):
    """Items from :class:`~mmvit.data.sources.annotations.Annotations` (one kind, or per entry by extension)."""

    kind: ClassVar[Kind | None] = None  # None: each entry's kind from its file extension

    def __init__(self, annotations: ann.Annotations, root: str, *, classes: Sequence[str] | str | None,
                 ctx: SourceContext | None, name: str | None, weight: float, views: dict | None = None):
        if weight <= 0:
            raise ValueError(f"source {name or annotations.source!r}: weight must be positive, got {weight}")
        self.root, self.name, self.weight = root, name or annotations.source, float(weight)
        self.views = ViewsConfig.parse(views)
        self.allow_outside_root = (ctx or SourceContext()).allow_outside_root
        entries = annotations.entries
        self.paths = StringTable([e.path for e in entries])
        self.lines = np.array([e.line for e in entries], dtype=np.int64)
        self.raw = [e.label for e in entries]       # names (str), ints, or None
        self.errors = {i: e.extra["error"] for i, e in enumerate(entries) if "error" in e.extra}
        self._declared = read_classes(classes) if classes is not None else annotations.classes
        self.where = annotations.source
        self.table: ClassTable | None = None
        self._ids: np.ndarray | None = None

    # -- labels ---------------------------------------------------------------------------------------------
    def declared_classes(self) -> list[str] | None:
        """The class order this source declares (its ``classes:``, or the dataset's own class file)."""
        return None if self._declared is None else list(self._declared)

    def label_summary(self) -> tuple[list, list[int], str]:
        """``(raw labels, their line numbers, the annotation file)`` for building a class table."""
        return self.raw, self.lines.tolist(), self.where

    def bind(self, table: ClassTable) -> None:
        """Map every raw label through ``table`` (the run's table of this source's task)."""
        self.table, self._ids = table, table.encode(self.raw)

    def _own_table(self) -> ClassTable:
        spec = task_configs({})["default"]
        if self._declared is not None:
            spec.classes = list(self._declared)
        return build_table(getattr(self, "task", None) or "default", spec, [self])

    @property
    def classes(self) -> list[str]:
        """The names of the bound table (the source's own table when used outside a loader)."""
        if self.table is None:
            self.bind(self._own_table())
        return list(self.table.names)

    # -- items ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def item_kind(self, rel: str) -> Kind:
        return self.kind or kind_of(rel)

    def item(self, index: int) -> Item:
        if self._ids is None:
            self.bind(self._own_table())
        rel = self.paths[index]
        path = os.path.join(self.root, rel) if rel else self.where
        code = int(self._ids[index])
        item = Item(kind=self.item_kind(rel), path=path, id=rel or f"{self.where}:{self.lines[index]}",
                    label=code if code >= 0 else None)
        raw = self.raw[index]
        if index in self.errors:
            item.error = BadSample("bad_label", path, self.errors[index])
        elif not self.allow_outside_root and not inside_root(path, self.root):
            item.error = BadSample("path_outside_root", path, f"leaves root {self.root} (allow_outside_root: false)")
        elif code == UNKNOWN:
            item.error = BadSample("unknown_class", path, f"{self.where}:{self.lines[index]}: class {raw!r} is not "
                                   f"in the class table of task {self.table.task!r} ({self.table.origin})")
        elif code == OUT_OF_RANGE:
            item.error = BadSample("label_out_of_range", path, f"{self.where}:{self.lines[index]}: label {raw} not "
                                   f"in [0, {len(self.table)}) (task {self.table.task!r})")
        elif code == MISSING and self.labelled:
            item.error = BadSample("bad_label", path, f"{self.where}:{self.lines[index]}: no label")
        return item


def _root(root: str | None, annotation_file: str) -> str:
    return root if root is not None else os.path.dirname(os.path.abspath(annotation_file))


@DATASETS.register("image_list")
class ImageList(AnnotatedSource):
    """Images from a list file (``path label`` lines or CSV, see ``annotations.parse_list``)."""

    kinds = ("image",)
    kind = "image"

    def __init__(self, list: str, root: str | None = None, weight: float = 1.0,
                 format: Literal["auto", "csv", "space"] = "auto", classes: Sequence[str] | str | None = None,
                 name: str | None = None, *, ctx: SourceContext | None = None):
        super().__init__(ann.parse_list(list, format), _root(root, list), classes=classes, ctx=ctx, name=name,
                         weight=weight)


@DATASETS.register("video_list")
class VideoList(AnnotatedSource):
    """Videos from a list file (``path label`` lines, CSV, or a Kinetics annotation CSV)."""

    kinds = ("video",)
    has_views = True
    kind = "video"

    def __init__(self, list: str, root: str | None = None, weight: float = 1.0,
                 format: Literal["auto", "csv", "space"] = "auto", classes: Sequence[str] | str | None = None,
                 path_template: str = KINETICS_TEMPLATE, views: dict | None = None, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        super().__init__(ann.parse_list(list, format, path_template), _root(root, list), classes=classes, ctx=ctx,
                         name=name, weight=weight, views=views)


@DATASETS.register("image_folder")
class ImageFolder(AnnotatedSource):
    """``root/<class>/**/<image>``: one sub-folder per class. The class names are the folder names; their
    order is the run's class table (sorted folder names of the training split, or ``classes``, or the order
    of an ImageNet-style ``class_index`` file: ``imagenet_class_index.json`` or ``LOC_synset_mapping.txt``)."""

    kinds = ("image",)
    kind = "image"

    def __init__(self, root: str, weight: float = 1.0, classes: Sequence[str] | str | None = None,
                 class_index: str | None = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 name: str | None = None, *, ctx: SourceContext | None = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image_folder: root {root!r} is not a directory")
        if classes is not None and class_index is not None:
            raise ValueError("image_folder: give classes or class_index, not both")
        declared = read_classes(classes) if classes is not None else None
        if class_index is not None:
            declared = ann.read_class_index(class_index).classes
        folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        exts = tuple(e.lower() for e in extensions)
        entries = []
        for c in folders:
            for dirpath, dirnames, files in os.walk(os.path.join(root, c)):
                dirnames.sort()
                for fn in sorted(files):
                    if fn.lower().endswith(exts):
                        entries.append(ann.Entry(path=os.path.relpath(os.path.join(dirpath, fn), root), label=c,
                                                 line=len(entries) + 1))
        # The class list of a folder is its sub-folders: a declared order is the table; the folders alone are
        # this split's names, which the run's table (from the training split) maps.
        super().__init__(ann.Annotations(entries, declared, root), root, classes=None, ctx=ctx, name=name or root,
                         weight=weight)


@DATASETS.register("jsonl")
class JsonLines(AnnotatedSource):
    """``{"path": ..., "label": ...}`` per line; each entry's kind by its file extension unless ``kind``."""

    has_views = True

    def __init__(self, path: str, root: str | None = None, kind: Literal["auto", "image", "video"] = "auto",
                 weight: float = 1.0, classes: Sequence[str] | str | None = None, path_key: str = "path",
                 label_key: str = "label", views: dict | None = None, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        self.fixed_kind = None if kind == "auto" else kind
        super().__init__(ann.parse_jsonl(path, path_key, label_key), _root(root, path), classes=classes, ctx=ctx,
                         name=name, weight=weight, views=views)

    def item_kind(self, rel: str) -> Kind:
        return self.fixed_kind or kind_of(rel)

    def video_fraction(self) -> float:
        if self.fixed_kind is not None:
            return float(self.fixed_kind == "video")
        kinds = [kind_of(self.paths[i]) for i in range(min(len(self), 1000))]
        return sum(k == "video" for k in kinds) / max(1, len(kinds))


@DATASETS.register("ssv2")
class SomethingSomethingV2(AnnotatedSource):
    """Something-Something v2: ``annotations`` is ``train.json`` / ``validation.json`` / ``test.json``, the
    class order is ``labels.json`` (found beside it unless ``labels`` is given), videos ``<id>.webm``."""

    kinds = ("video",)
    has_views = True
    kind = "video"

    def __init__(self, annotations: str, root: str | None = None, labels: str | None = None,
                 path_template: str = "{id}.webm", weight: float = 1.0, views: dict | None = None,
                 name: str | None = None, *, ctx: SourceContext | None = None):
        super().__init__(vann.parse_ssv2(annotations, labels, path_template), _root(root, annotations), classes=None,
                         ctx=ctx, name=name, weight=weight, views=views)


@DATASETS.register("ucf101")
class UCF101(AnnotatedSource):
    """UCF101: ``list`` is ``trainlist0N.txt`` or ``testlist0N.txt``; the class order is ``classInd.txt``
    (found beside it unless ``class_index`` is given); ``root`` holds ``<Class>/v_<Class>_gXX_cYY.avi``."""

    kinds = ("video",)
    has_views = True
    kind = "video"

    def __init__(self, list: str, root: str | None = None, class_index: str | None = None, weight: float = 1.0,
                 views: dict | None = None, name: str | None = None, *, ctx: SourceContext | None = None):
        super().__init__(vann.parse_ucf101(list, class_index), _root(root, list), classes=None, ctx=ctx, name=name,
                         weight=weight, views=views)


@DATASETS.register("hmdb51")
class HMDB51(AnnotatedSource):
    """HMDB51: ``splits`` is the ``testTrainMulti_7030_splits`` folder, ``split`` 1-3, ``subset`` train or
    test; ``root`` holds ``<class>/<video>.avi``."""

    kinds = ("video",)
    has_views = True
    kind = "video"

    def __init__(self, splits: str, root: str, split: int = 1, subset: Literal["train", "test"] = "train",
                 weight: float = 1.0, views: dict | None = None, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        a = vann.parse_hmdb51(splits, split, subset)
        super().__init__(a, root, classes=None, ctx=ctx, name=name or f"hmdb51 split {split} {subset}",
                         weight=weight, views=views)


@DATASETS.register("files")
class Files(AnnotatedSource):
    """Unlabelled media files (prediction, feature extraction): ``paths`` (files, folders searched
    recursively, or list files with one path per line), each file's kind by its extension."""

    has_views = True
    labelled = False

    def __init__(self, paths: list[str], weight: float = 1.0, views: dict | None = None, name: str | None = None,
                 *, ctx: SourceContext | None = None):
        entries = []
        for given in paths:
            for path in _expand(given):
                entries.append(ann.Entry(path=os.path.abspath(path), label=None, line=len(entries) + 1))
        ctx = SourceContext(allow_outside_root=True, allow_pipe_urls=(ctx or SourceContext()).allow_pipe_urls)
        super().__init__(ann.Annotations(entries, None, "files"), "/", classes=None, ctx=ctx, name=name or "files",
                         weight=weight, views=views)

    def _own_table(self) -> ClassTable:
        return ClassTable(self.task or "default", (), True, "unlabelled")


def _expand(given: str) -> list[str]:
    """A file, every media file under a folder (sorted), or the paths listed in a ``.txt`` list."""
    if os.path.isdir(given):
        found = []
        for dirpath, dirnames, files in os.walk(given):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in sorted(files)
                      if f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
        return found
    if given.lower().endswith(".txt") and os.path.isfile(given):
        base = os.path.dirname(os.path.abspath(given))
        return [os.path.join(base, e.path) for e in ann.parse_space_list(given).entries]
    return [given]

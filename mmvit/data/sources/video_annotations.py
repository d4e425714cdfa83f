"""Parsers for the annotation files of public video datasets: Kinetics, Something-Something v2, UCF101 and
HMDB51 (pure parsing; shared types and helpers in :mod:`mmvit.data.sources.annotations`).

- Kinetics-400/600/700 CSVs (Kay et al. 2017, arXiv:1705.06950): ``label,youtube_id,time_start,time_end,split``
  (test files without ``label``); files named as the ActivityNet crawler names them
  (``Crawler/Kinetics/download.py``: ``{youtube_id}_{start:06d}_{end:06d}.mp4``, per-class folders optional).
- Something-Something v2 (Goyal et al. 2017, arXiv:1706.04261): ``labels.json`` + ``train.json`` /
  ``validation.json`` / ``test.json``; the class is the ``template`` with its brackets removed, looked up in
  ``labels.json`` (PySlowFast ``slowfast/datasets/ssv2.py``, mmaction2 ``tools/data/parse_file_list.py``).
- UCF101 (Soomro et al. 2012, arXiv:1212.0402): ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``.
- HMDB51 (Kuehne et al., ICCV 2011): ``testTrainMulti_7030_splits/<class>_test_split<N>.txt``, ``<video> <0|1|2>``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Literal

from mmvit.data.sources.annotations import (
    KINETICS_TEMPLATE,
    Annotations,
    Entry,
    _bad,
    _csv_rows,
    _lines,
    _load_json,
    _template_fields,
)

KINETICS_FIELDS = ("youtube_id", "time_start", "time_end", "label", "label_underscore", "split")
SSV2_LABEL_FILES = ("labels.json", "something-something-v2-labels.json")
_UCF_NAME = re.compile(r"^v_(?P<name>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")  # v_ApplyEyeMakeup_g08_c01
_HMDB_CODES = {"train": "1", "test": "2", "unused": "0"}  # split_readme.txt: 1 train, 2 test, 0 not used


# ---------------------------------------------------------------------------------------------- Kinetics


def _seconds(value: str) -> int:
    """A Kinetics clip boundary in whole seconds. ``'%06d' % t`` in the ActivityNet crawler truncates a
    fractional time, and so does this, so that the name matches the downloaded file."""
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ValueError(value)
    return int(t)


def parse_kinetics_csv(path: str, path_template: str = KINETICS_TEMPLATE) -> Annotations:
    """A Kinetics annotation CSV (``train.csv``, ``validate.csv``/``val.csv``, ``test.csv``).

    Args:
        path: the CSV. The header must name ``youtube_id``, ``time_start`` and ``time_end``; ``label`` is
            absent from some test files (their entries are unlabelled); other columns (``split``, ``is_cc``)
            are kept in ``extra``.
        path_template: the video file name relative to the root, a ``str.format`` pattern over
            ``{youtube_id}``, ``{time_start}``, ``{time_end}`` (ints), ``{label}`` (as written),
            ``{label_underscore}`` (spaces replaced by ``_``, as mmaction2's ``rename_classnames.sh`` renames
            class folders) and ``{split}``. E.g. ``"{label}/" + KINETICS_TEMPLATE`` for per-class folders.

    Returns:
        Entries labelled with the class name as written (quotes are CSV quoting: ``"air drumming"`` is
        ``air drumming``); ``classes`` is ``None`` (Kinetics ships no class order).
    """
    fields = _template_fields(path_template, KINETICS_FIELDS)
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: empty file, expected a Kinetics header (label,youtube_id,time_start,time_end,split)")
    header_line, header = first
    columns = [c.strip().lower() for c in header]
    missing = [c for c in ("youtube_id", "time_start", "time_end") if c not in columns]
    if missing:
        raise ValueError(f"{path}:{header_line}: not a Kinetics header (no {', '.join(missing)} column): "
                         f"{','.join(header)!r}")
    col = {name: i for i, name in reversed(list(enumerate(columns)))}  # first occurrence wins
    labelled = "label" in col
    entries = []
    for number, row in rows:
        if len(row) != len(columns):
            # Usually a label with a comma that was not quoted.
            entries.append(_bad(path, number, f"{len(row)} fields, the header has {len(columns)}: {','.join(row)!r}"))
            continue
        values = {name: row[i].strip() for name, i in col.items()}
        try:
            start, end = _seconds(values["time_start"]), _seconds(values["time_end"])
        except ValueError:
            entries.append(_bad(path, number, f"time_start/time_end {values['time_start']!r}/{values['time_end']!r} "
                                              "are not times in seconds"))
            continue
        label = values.get("label") or None
        extra = {k: v for k, v in values.items() if k not in ("label", "time_start", "time_end")}
        extra.update(time_start=start, time_end=end)
        if not values["youtube_id"]:
            entries.append(_bad(path, number, "empty youtube_id", **extra))
            continue
        if labelled and label is None and values.get("split", "").lower() != "test":
            entries.append(_bad(path, number, "empty label", **extra))
            continue
        fill = {"youtube_id": values["youtube_id"], "time_start": start, "time_end": end,
                "split": values.get("split") or None}
        if label is not None:
            fill.update(label=label, label_underscore=label.replace(" ", "_"))
        absent = sorted(f for f in fields if fill.get(f) is None)
        if absent:
            entries.append(_bad(path, number, f"path_template {path_template!r} needs {{{absent[0]}}}, "
                                              "which this row does not have", **extra))
            continue
        entries.append(Entry(path=path_template.format(**fill), label=label, line=number, extra=extra))
    return Annotations(entries=entries, classes=None, source=path)


# ---------------------------------------------------------------------------------- Something-Something v2


def read_ssv2_labels(path: str) -> list[str]:
    """``labels.json`` (``{"Approaching something with your camera": "0", ...}``) as the class order."""
    table = _load_json(path)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected an object mapping template names to indices, got {type(table).__name__}")
    by_index: dict[int, str] = {}
    for name, value in table.items():
        # The official file writes indices as strings ("0"); a JSON int is accepted, a float or bool is not.
        whole = (isinstance(value, str) and value.strip().isdigit()) or (type(value) is int and value >= 0)
        if not whole:
            raise ValueError(f"{path}: class {name!r} has index {value!r}, not a whole number")
        index = int(value)
        if index in by_index:
            raise ValueError(f"{path}: classes {by_index[index]!r} and {name!r} both have index {index}")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        gaps = sorted(set(range(len(by_index))) - set(by_index))
        raise ValueError(f"{path}: indices must be 0..{len(by_index) - 1}; missing {gaps[:5]}")
    return [by_index[i] for i in range(len(by_index))]


def parse_ssv2(path: str, labels: str | None = None, path_template: str = "{id}.webm") -> Annotations:
    """A Something-Something v2 list (``train.json``, ``validation.json``, ``test.json``, or their
    ``something-something-v2-*.json`` names).

    Args:
        path: the JSON list of ``{"id", "label", "template", "placeholders"}`` records (``test.json``: only
            ``id``; its entries are unlabelled).
        labels: ``labels.json``; default: ``labels.json`` or ``something-something-v2-labels.json`` next to
            ``path``. Needed for labelled lists.
        path_template: the video file relative to the root (the official release is ``<id>.webm``).

    Returns:
        Entries labelled with the class name: the ``template`` with ``[`` and ``]`` removed
        (``"Putting [something] on [something]"`` -> ``"Putting something on something"``), exactly as
        PySlowFast and mmaction2 look it up; ``extra`` keeps ``template``, ``placeholders`` and the filled-in
        sentence as ``caption``. ``classes`` is the ``labels.json`` order. ``line`` is the record number.
    """
    _template_fields(path_template, ("id",))
    if labels is None:
        here = os.path.dirname(os.path.abspath(path))
        labels = next((os.path.join(here, n) for n in SSV2_LABEL_FILES if os.path.isfile(os.path.join(here, n))), None)
    records = _load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    labelled = any(isinstance(r, dict) and ("template" in r or "label" in r) for r in records)
    classes = read_ssv2_labels(labels) if labels is not None else None
    if labelled and classes is None:
        raise ValueError(f"{path}: labelled records but no {' or '.join(SSV2_LABEL_FILES)} next to it; pass labels=")
    index = {name: i for i, name in enumerate(classes or [])}
    lowered = {name.lower(): name for name in index}
    entries = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            entries.append(_bad(path, number, f"record is {type(record).__name__}, not an object: {record!r:.80}"))
            continue
        vid = record.get("id")
        if isinstance(vid, bool) or not isinstance(vid, (str, int)) or not str(vid).strip():
            entries.append(_bad(path, number, f"no usable id: {vid!r}"))
            continue
        vid = str(vid).strip()
        extra = {("caption" if k == "label" else k): v for k, v in record.items() if k != "id"}
        video = path_template.format(id=vid)
        if not labelled:
            entries.append(Entry(path=video, label=None, line=number, extra=extra))
            continue
        template = record.get("template")
        if not isinstance(template, str):
            entries.append(_bad(path, number, f"id {vid}: no template (got {template!r})", path=video, **extra))
            continue
        name = template.replace("[", "").replace("]", "")
        if name not in index:
            hint = f" (labels.json has {lowered[name.lower()]!r})" if name.lower() in lowered else ""
            entries.append(_bad(path, number, f"id {vid}: template {template!r} -> {name!r} is not in {labels}{hint}",
                                path=video, **extra))
            continue
        entries.append(Entry(path=video, label=name, line=number, extra=extra))
    return Annotations(entries=entries, classes=classes, source=path)


# ------------------------------------------------------------------------------------------------ UCF101


def read_ucf101_classes(path: str) -> list[str]:
    """``classInd.txt`` (``1 ApplyEyeMakeup`` ... ``101 YoYo``, 1-based) as the class order."""
    by_index: dict[int, tuple[str, int]] = {}
    for number, text in _lines(path):
        if not text.strip():
            continue
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<index> <ClassName>', got {text!r}")
        index, name = int(parts[0]), parts[1]
        if index in by_index:
            raise ValueError(f"{path}:{number}: index {index} already used on line {by_index[index][1]}")
        by_index[index] = (name, number)
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise ValueError(f"{path}: indices must be 1..{len(by_index)}, got {sorted(by_index)[:3]}...")
    names = [by_index[i][0] for i in range(1, len(by_index) + 1)]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: class {dup!r} appears twice")
    return names


def parse_ucf101(path: str, class_index: str | None = None) -> Annotations:
    """A UCF101 split list: ``trainlist0N.txt`` (``Class/v_Class_gGG_cCC.avi <1-based index>``) or
    ``testlist0N.txt`` (the path only).

    The class is the folder (the first path component), looked up in ``classInd.txt``; a written index must
    agree with it. The file name is never used for the class: one class is spelled differently there
    (folder and ``classInd.txt`` ``HandstandPushups``, files ``v_HandStandPushups_g01_c01.avi``), and the
    path is kept exactly as the archive lays it out. A folder that matches a class only up to case (a
    re-packed copy) is accepted for that class and noted in ``extra["folder"]``.

    Args:
        path: the list file.
        class_index: ``classInd.txt``; default: the one next to ``path``.

    Returns:
        Entries labelled with the class name (``classInd.txt`` spelling), ``extra["index"]`` the written
        1-based index when present, ``extra["group"]``/``extra["clip"]`` from the file name (the splits keep
        groups, i.e. the source video, apart); ``classes`` is the ``classInd.txt`` order.
    """
    class_index = class_index or os.path.join(os.path.dirname(os.path.abspath(path)), "classInd.txt")
    if not os.path.isfile(class_index):
        raise ValueError(f"{path}: no classInd.txt next to it; pass class_index=")
    classes = read_ucf101_classes(class_index)
    exact = {name: i for i, name in enumerate(classes)}
    folded: dict[str, list[str]] = {}
    for name in classes:
        folded.setdefault(name.lower(), []).append(name)
    entries = []
    for number, text in _lines(path):
        text = text.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        written = int(parts[1]) if len(parts) == 2 and parts[1].lstrip("-").isdigit() else None
        video = parts[0] if written is not None else text
        folder, _, name = video.partition("/")
        if not name:
            entries.append(_bad(path, number, f"{video!r} has no class folder", path=video))
            continue
        extra: dict[str, Any] = {}
        match = _UCF_NAME.match(os.path.splitext(os.path.basename(name))[0])
        if match:
            extra.update(group=int(match["group"]), clip=int(match["clip"]))
        if written is not None:
            extra["index"] = written
        cls = folder if folder in exact else None
        if cls is None and len(folded.get(folder.lower(), [])) == 1:
            cls = folded[folder.lower()][0]
            extra["folder"] = folder
        if cls is None:
            entries.append(_bad(path, number, f"class folder {folder!r} is not in {class_index}", path=video, **extra))
            continue
        if written is not None and written != exact[cls] + 1:
            said = f"{classes[written - 1]!r}" if 1 <= written <= len(classes) else "no class"
            entries.append(_bad(path, number, f"label {written} is {said} in classInd.txt but the folder is {folder!r}",
                                path=video, **extra))
            continue
        entries.append(Entry(path=video, label=cls, line=number, extra=extra))
    return Annotations(entries=entries, classes=classes, source=path)


# ------------------------------------------------------------------------------------------------ HMDB51


def parse_hmdb51(splits_dir: str, split: int = 1, subset: Literal["train", "test", "unused"] = "train") -> Annotations:
    """One HMDB51 split from ``testTrainMulti_7030_splits/<class>_test_split<split>.txt``.

    Each line is ``<video>.avi <code>``; per the dataset's ``split_readme.txt``, 1 = training, 2 = testing,
    0 = in neither (70 / 30 / the rest per class and split). Whitespace around the fields is ignored.

    Args:
        splits_dir: the folder holding the 153 split files (or its parent, if it holds
            ``testTrainMulti_7030_splits/``).
        split: 1, 2 or 3.
        subset: which code to keep.

    Returns:
        Entries ``<class>/<video>`` labelled with the class (from the file name), class files in sorted order
        and lines in file order; ``line`` counts within ``extra["file"]``. Malformed lines are error entries in
        every subset. ``classes`` is the sorted class names (HMDB51 ships no index file; sorted is the order
        mmaction2's generated ``classInd.txt`` uses).
    """
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB51 split must be 1, 2 or 3, got {split!r}")
    if subset not in _HMDB_CODES:
        raise ValueError(f"HMDB51 subset must be one of {sorted(_HMDB_CODES)}, got {subset!r}")
    nested = os.path.join(splits_dir, "testTrainMulti_7030_splits")
    if os.path.isdir(nested):
        splits_dir = nested
    suffix = f"_test_split{split}.txt"
    files = sorted(f for f in os.listdir(splits_dir) if f.endswith(suffix) and len(f) > len(suffix))
    pattern = os.path.join(splits_dir, f"*{suffix}")
    if not files:
        raise ValueError(f"{pattern}: no HMDB51 split files")
    code = _HMDB_CODES[subset]
    classes, entries = [], []
    for fname in files:
        cls = fname[: -len(suffix)]
        classes.append(cls)
        file = os.path.join(splits_dir, fname)
        for number, text in _lines(file):
            parts = text.strip().rsplit(None, 1)
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                entries.append(_bad(file, number, f"expected '<video> <0|1|2>', got {text.strip()!r}",
                                    path=f"{cls}/{parts[0]}", file=fname))
            elif parts[1] == code:
                entries.append(Entry(path=f"{cls}/{parts[0]}", label=cls, line=number, extra={"file": fname}))
    return Annotations(entries=entries, classes=classes, source=pattern)

"""Parsers for the annotation files that public video and image datasets ship (pure parsing, no media I/O).

Each parser returns :class:`Annotations`: entries in file order (media path relative to the dataset root,
the label as the format writes it, the 1-based line or record number) and the dataset's own class order
when the format ships one. Formats, and the code each follows:

- Kinetics-400/600/700 CSVs (Kay et al. 2017, arXiv:1705.06950): ``label,youtube_id,time_start,time_end,split``
  (test files without ``label``); files named as the ActivityNet crawler names them
  (``Crawler/Kinetics/download.py``: ``{youtube_id}_{start:06d}_{end:06d}.mp4``, per-class folders optional).
- Something-Something v2 (Goyal et al. 2017, arXiv:1706.04261): ``labels.json`` + ``train.json`` /
  ``validation.json`` / ``test.json``; the class is the ``template`` with its brackets removed, looked up in
  ``labels.json`` (PySlowFast ``slowfast/datasets/ssv2.py``, mmaction2 ``tools/data/parse_file_list.py``).
- UCF101 (Soomro et al. 2012, arXiv:1212.0402): ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``.
- HMDB51 (Kuehne et al., ICCV 2011): ``testTrainMulti_7030_splits/<class>_test_split<N>.txt``, ``<video> <0|1|2>``.
- ImageNet class-index files (Keras ``imagenet_class_index.json``, ``LOC_synset_mapping.txt``) and the Kaggle
  ``LOC_val_solution.csv``; generic JSON Lines; plain one-name-per-line class lists.

A malformed line is never dropped or guessed: it becomes an entry with ``label=None`` and ``extra["error"]``
(``"<file>:<line>: <what is wrong>"``), so the loader skips it as a bad sample with that reason. A file that
is not of the format at all (wrong header, not JSON, not UTF-8) raises ``ValueError`` naming file, line and
value. The page docs/datasets.md describes every layout and quirk.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import math
import os
import re
import string
from collections.abc import Iterator
from typing import Any, Literal

KINETICS_TEMPLATE = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
KINETICS_FIELDS = ("youtube_id", "time_start", "time_end", "label", "label_underscore", "split")
SSV2_LABEL_FILES = ("labels.json", "something-something-v2-labels.json")
_UCF_NAME = re.compile(r"^v_(?P<name>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")  # v_ApplyEyeMakeup_g08_c01
_HMDB_CODES = {"train": "1", "test": "2", "unused": "0"}  # split_readme.txt: 1 train, 2 test, 0 not used


@dataclasses.dataclass
class Entry:
    """One annotated sample.

    Attributes:
        path: media path relative to the dataset root, as the dataset lays files out ("" when it cannot be
            built from a malformed line).
        label: a class name as written (after the format's own normalisation), an int index when the file
            gives indices, or ``None`` for unlabelled (test) entries and malformed lines.
        line: 1-based line (or JSON record) number in the annotation file.
        extra: anything else worth keeping; ``extra["error"]`` marks a malformed line.
    """

    path: str
    label: str | int | None
    line: int
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Annotations:
    """Entries in file order, the dataset's own class order (index = position) when it ships one, and the
    annotation file(s) read."""

    entries: list[Entry]
    classes: list[str] | None
    source: str


@dataclasses.dataclass
class ClassIndex:
    """A class order from a class-index file: ``classes[i]`` is the folder name (ImageNet synset id) of class
    ``i``, ``names[i]`` its display name. Display names are not unique (ImageNet has two ``crane`` and two
    ``maillot`` synsets), so only ``classes`` may serve as keys."""

    classes: list[str]
    names: list[str]
    source: str


def _bad(src: str, line: int, message: str, path: str = "", **extra: Any) -> Entry:
    return Entry(path=path, label=None, line=line, extra={**extra, "error": f"{src}:{line}: {message}"})


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file with any line ending; a byte-order mark is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    data = data.removeprefix(codecs.BOM_UTF8)
    # bytes.splitlines breaks only at \n, \r\n and \r (str.splitlines would also break at \x0c, \u2028, ...),
    # so the numbers match what an editor shows. UCF101's lists end lines with \r\n.
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start}: {raw!r})") from None


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank rows of a CSV file (the number of the line a row ends on)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{reader.line_num + 1}: not UTF-8 text ({e.reason})") from None
            except csv.Error as e:
                raise ValueError(f"{path}:{reader.line_num}: not CSV ({e})") from None
            if any(field.strip() for field in row):
                yield reader.line_num, row


def read_class_file(path: str) -> list[str]:
    """Class names, one per line (stripped; blank lines skipped; index = position among the names).

    Raises:
        ValueError: a name appears twice (naming both lines).
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, text in _lines(path):
        name = text.strip()
        if not name:
            continue
        if name in seen:
            raise ValueError(f"{path}:{number}: class {name!r} already named on line {seen[name]}")
        seen[name] = number
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- Kinetics


def _template_fields(template: str, allowed: tuple[str, ...]) -> set[str]:
    """The fields a ``path_template`` uses; an unknown one raises before any line is read."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = sorted(f for f in fields if f not in allowed)
    if unknown:
        raise ValueError(f"path_template {template!r}: unknown field(s) {unknown}; "
                         f"the fields are {', '.join('{' + f + '}' for f in allowed)}")
    return fields


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


# ------------------------------------------------------------------------------------------------ ImageNet


def read_class_index(path: str) -> ClassIndex:
    """An ImageNet-style class index: the class order (synset ids = class folder names) and display names.

    Two layouts:

    - ``imagenet_class_index.json`` (Keras): ``{"0": ["n01440764", "tench"], ...}``, indices 0..N-1;
    - ``LOC_synset_mapping.txt`` (Kaggle ImageNet localisation) / ``synset_words.txt``: one
      ``n01440764 tench, Tinca tinca`` per line, line order = class order; the display name is the rest of
      the line.

    Raises:
        ValueError: a malformed entry, a gap in the indices or a synset id listed twice (naming both).
    """
    classes: list[str] = []
    names: list[str] = []
    first_seen: dict[str, str] = {}

    def add(wnid: str, name: str, where: str) -> None:
        if wnid in first_seen:
            raise ValueError(f"{path}: synset {wnid!r} at {where} already listed at {first_seen[wnid]}")
        first_seen[wnid] = where
        classes.append(wnid)
        names.append(name)

    if path.lower().endswith(".json"):
        table = _load_json(path)
        if not isinstance(table, dict):
            raise ValueError(f"{path}: expected {{\"0\": [\"n01440764\", \"tench\"], ...}}, got {type(table).__name__}")
        keys = {}
        for key, value in table.items():
            if not str(key).isdigit() or not (isinstance(value, list) and len(value) == 2
                                               and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{path}: entry {key!r}: {value!r} is not \"<index>\": [\"<synset>\", \"<name>\"]")
            keys[int(key)] = value
        if sorted(keys) != list(range(len(keys))):
            raise ValueError(f"{path}: indices must be 0..{len(keys) - 1}, missing "
                             f"{sorted(set(range(len(keys))) - set(keys))[:5]}")
        for i in range(len(keys)):
            add(keys[i][0], keys[i][1], f"key {i}")
    else:
        for number, text in _lines(path):
            if not text.strip():
                continue
            wnid, *rest = text.split(None, 1)
            add(wnid, rest[0].strip() if rest else wnid, f"line {number}")
    if not classes:
        raise ValueError(f"{path}: no classes")
    return ClassIndex(classes=classes, names=names, source=path)


def parse_imagenet_val(path: str, path_template: str = "{image_id}.JPEG") -> Annotations:
    """Kaggle's ``LOC_val_solution.csv`` for the flat ImageNet validation folder: header
    ``ImageId,PredictionString``, rows ``ILSVRC2012_val_00000001,n01751748 x0 y0 x1 y1 [n01751748 ...]``.

    The label is the synset of the boxes (all boxes of a validation image are of its one class); entries
    keep the file order, and ``extra["boxes"]`` counts the boxes. ``classes`` is ``None``: take the order from
    :func:`read_class_index`.
    """
    _template_fields(path_template, ("image_id",))
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None or [c.strip().lower() for c in first[1]] != ["imageid", "predictionstring"]:
        line, got = (first[0], ",".join(first[1])) if first else (1, "an empty file")
        raise ValueError(f"{path}:{line}: expected the header ImageId,PredictionString, got {got!r}")
    entries = []
    for number, row in rows:
        if len(row) != 2 or not row[0].strip():
            entries.append(_bad(path, number, f"expected '<ImageId>,<PredictionString>', got {','.join(row)!r}"))
            continue
        image = path_template.format(image_id=row[0].strip())
        tokens = row[1].split()
        synsets = set(tokens[0::5])
        if not tokens or len(tokens) % 5 or len(synsets) != 1:
            why = "no boxes" if not tokens else "boxes of several classes" if len(synsets) > 1 else "not 5 values a box"
            entries.append(_bad(path, number, f"{why}: {row[1]!r}", path=image))
            continue
        entries.append(Entry(path=image, label=tokens[0], line=number, extra={"boxes": len(tokens) // 5}))
    return Annotations(entries=entries, classes=None, source=path)


# ------------------------------------------------------------------------------------------- JSON Lines


def parse_jsonl(path: str, path_key: str = "path", label_key: str = "label") -> Annotations:
    """JSON Lines: one ``{"path": ..., "label": ...}`` object per line (blank lines ignored).

    ``label`` is a class name (stripped) or an int index; absent or ``null`` means unlabelled. Other keys
    go to ``extra``. A line that is not a JSON object, or has no usable path or label, is an error entry.

    Raises:
        ValueError: no line at all parses as a JSON object (the file is not JSON Lines), naming the first.
    """
    entries: list[Entry] = []
    first_error: tuple[int, str] | None = None
    parsed = 0
    for number, text in _lines(path):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            first_error = first_error or (number, text)
            entries.append(_bad(path, number, f"not JSON ({e.msg} at column {e.colno}): {text.strip()[:80]!r}"))
            continue
        if not isinstance(record, dict):
            first_error = first_error or (number, text)
            entries.append(_bad(path, number, f"a JSON {type(record).__name__}, not an object: {text.strip()[:80]!r}"))
            continue
        parsed += 1
        media, label = record.get(path_key), record.get(label_key)
        extra = {k: v for k, v in record.items() if k not in (path_key, label_key)}
        if not isinstance(media, str) or not media.strip():
            entries.append(_bad(path, number, f"no usable {path_key!r}: {media!r}", **extra))
        elif isinstance(label, bool) or not isinstance(label, (str, int, type(None))) or (
                isinstance(label, str) and not label.strip()):
            entries.append(_bad(path, number, f"{label_key!r} must be a class name or an int, got {label!r}",
                                path=media, **extra))
        else:
            entries.append(Entry(path=media, label=label.strip() if isinstance(label, str) else label,
                                 line=number, extra=extra))
    if parsed == 0 and first_error is not None:
        raise ValueError(f"{path}:{first_error[0]}: not JSON Lines (no line is a JSON object): {first_error[1][:80]!r}")
    return Annotations(entries=entries, classes=None, source=path)

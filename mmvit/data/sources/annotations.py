"""Annotation files as entries: the shared types, generic list formats, image class indices, JSON Lines.

Each parser returns :class:`Annotations`: entries in file order (media path relative to the dataset root,
the label as the format writes it, the 1-based line or record number) and the dataset's own class order
when the format ships one. Here: mmaction2-style space lists and CSV lists (:func:`parse_list`), ImageNet
class-index files (Keras ``imagenet_class_index.json``, ``LOC_synset_mapping.txt``) and the Kaggle
``LOC_val_solution.csv``, generic JSON Lines, plain one-name-per-line class lists. The video datasets'
formats (Kinetics, Something-Something v2, UCF101, HMDB51) are in :mod:`~mmvit.data.sources.video_annotations`.

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
import string
from collections.abc import Iterator
from typing import Any, Literal

KINETICS_TEMPLATE = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"


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


def _template_fields(template: str, allowed: tuple[str, ...]) -> set[str]:
    """The fields a ``path_template`` uses; an unknown one raises before any line is read."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = sorted(f for f in fields if f not in allowed)
    if unknown:
        raise ValueError(f"path_template {template!r}: unknown field(s) {unknown}; "
                         f"the fields are {', '.join('{' + f + '}' for f in allowed)}")
    return fields



# ------------------------------------------------------------------------------------- generic list files

PATH_COLUMNS = ("path", "filename", "video", "image", "file")
LABEL_COLUMNS = ("label", "class", "label_id")


def parse_space_list(path: str) -> Annotations:
    """mmaction2-style list: ``path label`` per line. The path may contain spaces (the label is the last
    field), ``#`` starts a comment line, a line with one field is unlabelled."""
    entries = []
    for number, text in _lines(path):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        entries.append(Entry(path=parts[0], label=parts[1] if len(parts) == 2 else None, line=number))
    return Annotations(entries=entries, classes=None, source=path)


def parse_csv_list(path: str, path_template: str = KINETICS_TEMPLATE) -> Annotations:
    """A CSV list: a Kinetics annotation file (a ``youtube_id`` column: :func:`parse_kinetics_csv`), one with
    a header naming a path column (``path``, ``filename``, ``video``, ``image``, ``file``) and a label column
    (``label``, ``class``, ``label_id``), or headerless ``path,label`` rows."""
    rows = list(_csv_rows(path))
    if not rows:
        return Annotations(entries=[], classes=None, source=path)
    header = [c.strip().lower() for c in rows[0][1]]
    if "youtube_id" in header:
        from mmvit.data.sources.video_annotations import parse_kinetics_csv

        return parse_kinetics_csv(path, path_template)
    path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if path_col is None:
        path_col, label_col, body = 0, 1, rows
    else:
        body = rows[1:]
    entries = []
    for number, row in body:
        media = row[path_col].strip() if path_col < len(row) else ""
        label = row[label_col].strip() if label_col is not None and label_col < len(row) else ""
        if not media:
            entries.append(_bad(path, number, f"no path in row {','.join(row)!r}"))
            continue
        entries.append(Entry(path=media, label=label or None, line=number))
    return Annotations(entries=entries, classes=None, source=path)


def parse_list(path: str, fmt: Literal["auto", "csv", "space"] = "auto",
               path_template: str = KINETICS_TEMPLATE) -> Annotations:
    """A list file: CSV for ``.csv`` (or ``fmt: csv``), space-separated otherwise."""
    if fmt == "auto":
        fmt = "csv" if path.lower().endswith(".csv") else "space"
    return parse_csv_list(path, path_template) if fmt == "csv" else parse_space_list(path)


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

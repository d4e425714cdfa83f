"""Class tables: one per label space ("task"), fixed before training, the same for every split.

A label is written either as an integer (it stays the integer written: ``7`` is class 7) or as a class name,
mapped through the task's table. The table comes from ``tasks.<task>.classes`` (a list, or a file with one
name per line), else from a class order the training sources declare (a source's ``classes:``, Something-
Something's ``labels.json``, UCF101's ``classInd.txt``, an ImageNet class index), else from the names the
training split lists (every name, sorted once); a task with integer labels only gets ``0 .. K-1`` with ``K``
from ``tasks.<task>.num_classes``, ``data.num_classes`` or the largest label seen. Every other split,
evaluation and prediction map names through that table, never through their own: a validation list that
lacks some classes keeps training's indices. A name outside the table is a bad sample (``unknown_class``),
an integer outside it ``label_out_of_range``.

A file that mixes integers and names is refused before training, naming the file, line and value, unless a
table says how names map; nothing is remapped silently.

The run writes the tables to ``RUN_DIR/classes.json``, into every checkpoint's client state and, as
``tasks.<task>.classes``, into the exported ``config.yaml``; whoever loads the run reads them from there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mmvit.typed import from_dict, num

DEFAULT_TASK = "default"
UNKNOWN = -1         # a name outside the table
MISSING = -2         # no label (unlabelled entry or malformed line)
OUT_OF_RANGE = -3    # an integer outside [0, K)


def is_int_label(label: Any) -> bool:
    if isinstance(label, bool):
        return False
    if isinstance(label, int):
        return True
    return isinstance(label, str) and label.strip().lstrip("-").isdigit()


@dataclasses.dataclass
class TaskConfig:
    """One entry of the ``tasks:`` section."""

    classes: list[str] | str | None = None    # the class names in index order, or a file with one per line
    num_classes: int | None = num(None, ge=1)  # for integer labels without names
    weight: float = num(1.0, ge=0.0)          # the task's weight in the loss (per example)


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The classes of one task: ``names[i]`` is class ``i``."""

    task: str
    names: tuple[str, ...]
    integer: bool = False     # labels are integers (names are their decimal strings)
    origin: str = ""          # where the table came from, for messages

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels: Sequence[Any]) -> np.ndarray:
        """Class indices of raw labels (names or integers); :data:`UNKNOWN`, :data:`MISSING` or
        :data:`OUT_OF_RANGE` where a label has none."""
        index = {n: i for i, n in enumerate(self.names)}
        out = np.empty(len(labels), dtype=np.int64)
        for j, raw in enumerate(labels):
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                out[j] = MISSING
            elif is_int_label(raw):
                k = int(raw)
                out[j] = k if 0 <= k < len(self.names) else OUT_OF_RANGE
            else:
                out[j] = index.get(str(raw).strip(), UNKNOWN)
        return out

    def to_dict(self) -> dict:
        return {"classes": list(self.names), "integer": self.integer, "origin": self.origin}


class ClassTables(dict):
    """``{task: ClassTable}`` in task order (the order of the heads and of ``PackedBatch.tasks``)."""

    @property
    def tasks(self) -> list[str]:
        return list(self)

    def task_index(self, task: str | None) -> int:
        if task is None:
            if len(self) != 1:
                raise ValueError(f"this run has tasks {self.tasks}: every source must name its task")
            return 0
        if task not in self:
            raise KeyError(f"task {task!r} is not one of the run's tasks {self.tasks}")
        return self.tasks.index(task)

    def to_json(self) -> dict:
        return {"version": 1, "tasks": {t: table.to_dict() for t, table in self.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> ClassTables:
        tasks = data.get("tasks", data)
        return cls((t, ClassTable(t, tuple(v["classes"]), bool(v.get("integer", False)), v.get("origin", "")))
                   for t, v in tasks.items())

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> ClassTables:
        with open(path) as f:
            return cls.from_json(json.load(f))


def read_classes(classes: Sequence[str] | str | None) -> list[str] | None:
    """A ``classes:`` value: a list, or a file with one name per line (duplicates refused)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        from mmvit.data.sources.annotations import read_class_file

        return read_class_file(classes)
    names = [str(c).strip() for c in classes]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"classes: {n!r} is listed twice (positions {seen[n]} and {i})")
        seen[n] = i
    return names


def task_configs(cfg: Mapping) -> dict[str, TaskConfig]:
    """The ``tasks:`` section (one ``default`` task when there is none), typed and in order."""
    section = cfg.get("tasks") or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"tasks: must be a mapping of task name -> {{classes, num_classes, weight}}, got {section!r}")
    out = {}
    for name, spec in section.items():
        if not str(name).isidentifier():
            raise ValueError(f"tasks: {name!r} is not a valid task name (letters, digits, _; it names a head)")
        out[str(name)] = from_dict(TaskConfig, spec, f"tasks.{name}")
    return out or {DEFAULT_TASK: TaskConfig()}


def check_labels(labels: Sequence[Any], lines: Sequence[int], where: str) -> None:
    """Refuse a list that mixes integer labels and names (without a table saying how names map): naming the
    first value of the minority kind, its line and the file."""
    given = [(lab, line) for lab, line in zip(labels, lines) if lab is not None and str(lab).strip()]
    ints = [g for g in given if is_int_label(g[0])]
    names = [g for g in given if not is_int_label(g[0])]
    if ints and names:
        odd = names if len(names) <= len(ints) else ints
        value, line = odd[0]
        raise ValueError(f"{where}:{line}: label {value!r} mixes with {len(ints)} integer and {len(names)} named "
                         f"labels in this file; integers stay the class indices written and names need a class "
                         f"table: give tasks.<task>.classes (or the source's classes:) to say how names map, or "
                         f"fix the line")


def build_table(task: str, spec: TaskConfig, sources: Iterable, *, default_num_classes: int | None = None
                ) -> ClassTable:
    """The table of one task from its config and its training sources (see the module docstring).

    Each source gives ``label_summary() -> (labels, lines, where)`` (``None`` when it cannot list its labels
    without reading everything, e.g. shards) and ``declared_classes()``.
    """
    sources = list(sources)
    names = read_classes(spec.classes)
    if names is not None:
        return ClassTable(task, tuple(names), False, f"tasks.{task}.classes")
    declared = [(s.declared_classes(), s.name) for s in sources if s.declared_classes() is not None]
    for other, where in declared[1:]:
        if list(other) != list(declared[0][0]):
            raise ValueError(f"task {task!r}: sources {declared[0][1]!r} and {where!r} declare different class "
                             f"orders; give tasks.{task}.classes")
    if declared:
        return ClassTable(task, tuple(declared[0][0]), False, f"declared by {declared[0][1]}")
    seen_names: set[str] = set()
    top, any_int = -1, False
    for s in sources:
        summary = s.label_summary()
        if summary is None:
            continue
        labels, lines, where = summary
        check_labels(labels, lines, where)
        for lab in labels:
            if lab is None or not str(lab).strip():
                continue
            if is_int_label(lab):
                any_int, top = True, max(top, int(lab))
            else:
                seen_names.add(str(lab).strip())
    if seen_names and any_int:
        raise ValueError(f"task {task!r}: some training sources label with integers and others with names; give "
                         f"tasks.{task}.classes to say how names map")
    if seen_names:
        return ClassTable(task, tuple(sorted(seen_names)), False, "names in the training split (sorted)")
    declared_k = next((s.declared_num_classes() for s in sources if s.declared_num_classes() is not None), None)
    k = spec.num_classes or declared_k or default_num_classes or (top + 1 if top >= 0 else None)
    if k is None:
        raise ValueError(f"task {task!r}: no class table: the training split lists no labels; give "
                         f"tasks.{task}.classes or tasks.{task}.num_classes")
    # Integers beyond K stay in the data: the loader skips and counts them (label_out_of_range).
    origin = ("tasks.num_classes" if spec.num_classes else "declared by the sources" if declared_k else
              "data.num_classes" if default_num_classes else "integer labels of the training split (0 .. largest)")
    return ClassTable(task, tuple(str(i) for i in range(k)), True, origin)


def resolve_class_tables(cfg: Mapping, split: str = "train") -> ClassTables:
    """The run's class tables from a full config: ``tasks:`` and the sources of ``split`` (the training split;
    see the module docstring). Tasks whose ``classes`` are all given need no data at all."""
    specs = task_configs(cfg)
    if all(spec.classes is not None for spec in specs.values()):
        return ClassTables((t, build_table(t, spec, [])) for t, spec in specs.items())
    from mmvit.data.config import resolve_data_config
    from mmvit.data.sources import SourceContext, build_sources

    data = resolve_data_config(dict(cfg.get("data") or {}), split)
    ctx = SourceContext(allow_outside_root=data.allow_outside_root, allow_pipe_urls=data.allow_pipe_urls)
    groups: dict[str, list] = {t: [] for t in specs}
    for source in build_sources(data.sources, ctx):
        task = source.task
        if task is None:
            if len(specs) != 1:
                raise ValueError(f"data source {source.name!r} names no task, and the run has tasks {list(specs)}: "
                                 f"give it task: <name>")
            task = next(iter(specs))
        if task not in groups:
            raise KeyError(f"data source {source.name!r}: task {task!r} is not in tasks: {list(specs)}")
        groups[task].append(source)
    return ClassTables((t, build_table(t, specs[t], groups[t], default_num_classes=data.num_classes))
                       for t in specs)


def tables_of(cfg: Mapping) -> ClassTables | None:
    """The tables a run wrote into its config (``tasks.<task>.classes`` lists), or ``None`` when it has none."""
    section = cfg.get("tasks") or {}
    if not section or any(not isinstance((v or {}).get("classes"), list) for v in section.values()):
        return None
    return resolve_class_tables(cfg)


def with_tables(cfg: Mapping, tables: ClassTables) -> dict:
    """``cfg`` with its ``tasks:`` section holding the resolved tables (what the run saves), and the model's
    heads sized from them: ``model.num_classes`` for one task, ``model.tasks`` for several."""
    out = dict(cfg)
    section = {}
    for t, table in tables.items():
        spec = dict((cfg.get("tasks") or {}).get(t) or {})
        spec["classes"] = list(table.names)
        spec.pop("num_classes", None)
        section[t] = spec
    out["tasks"] = section
    model = dict(out.get("model") or {})
    if len(tables) == 1 and "tasks" not in model:
        k = len(next(iter(tables.values())))
        if model.get("num_classes") not in (None, 0, k):
            raise ValueError(f"model.num_classes={model['num_classes']} but the class table of task "
                             f"{tables.tasks[0]!r} has {k} classes ({next(iter(tables.values())).origin})")
        model["num_classes"] = k
    else:
        sizes = {t: len(table) for t, table in tables.items()}
        if model.get("tasks") not in (None, sizes):
            raise ValueError(f"model.tasks={model['tasks']} disagrees with the class tables {sizes}")
        if model.get("num_classes"):
            raise ValueError("model.num_classes is for one task; with several tasks the heads are sized by their "
                             "class tables (model.tasks)")
        model["tasks"] = sizes
        model.pop("num_classes", None)
    out["model"] = model
    return out

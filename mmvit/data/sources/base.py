"""What every source provides: items, evaluation views, and a resumable per-slot stream of items.

A *slot* is one (rank, worker) pair: ``slot = rank * num_workers + worker``, ``num_slots = world * workers``.
Each slot reads a disjoint part of every source:

- indexed sources (lists, folders): item ``i`` of permutation ``perm(seed, source, cycle)`` belongs to slot
  ``i mod num_slots``. In training the stream is endless: when a slot's part is used up the next cycle
  starts with a fresh permutation, so no rank ever runs dry. In evaluation the order is the file order,
  there is one cycle, and every item belongs to exactly one slot.
- webdataset sources split by shard (see webdataset.py).

A stream's position is a small JSON-able dict, so that a loader can be resumed exactly (see stream.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from mmvit.data.errors import BadSample
from mmvit.data.rng import Purpose, rng
from mmvit.typed import from_dict

Kind = Literal["image", "video"]


@dataclasses.dataclass
class Item:
    """One sample before decoding.

    Attributes:
        kind: ``image`` or ``video``.
        path: where it comes from, for messages and metadata (a file path, or ``url#key`` in a shard).
        id: stable identifier (the path relative to the root, or the webdataset key); the video id of views.
        label: class index (``None`` until checked).
        data: the encoded file, for samples that arrive as bytes (webdataset).
        info: width/height/frames/fps from a JSON sidecar, when the source has one.
        error: a problem known before reading (bad label, path outside root): the item is skipped.
        task: index of the item's task in the run's class tables (set by the loader from its source).
        failed: set by the loader when the item turned out bad, so that its other evaluation views (the
            same object) are dropped without being counted again.
    """

    kind: Kind
    path: str
    id: str
    label: int | None
    data: bytes | None = None
    info: dict | None = None
    error: BadSample | None = None
    failed: bool = False
    task: int = 0

    @property
    def src(self) -> str | bytes:
        return self.data if self.data is not None else self.path


@dataclasses.dataclass
class ViewsConfig:
    """Evaluation views of a video: ``temporal`` clips x (``spatial`` square crops + the full frame).

    Each (video, view) becomes its own example, with ``meta["video_id"]`` and ``meta["view"]`` so that scores
    can be aggregated per video. Images always have one view (the full frame). Training ignores views.
    """

    temporal: int = 1
    spatial: int = 0
    full_frame: bool = True

    def __post_init__(self) -> None:
        if self.temporal < 1 or self.spatial < 0 or (self.spatial == 0 and not self.full_frame):
            raise ValueError(f"views need temporal >= 1 and at least one spatial crop or the full frame, got {self}")

    @classmethod
    def parse(cls, spec: dict | ViewsConfig | None) -> ViewsConfig:
        if isinstance(spec, ViewsConfig):
            return spec
        return from_dict(cls, spec, "views")

    def count(self, kind: Kind) -> int:
        return 1 if kind == "image" else self.temporal * (self.spatial + int(self.full_frame))

    def decode(self, view: int, kind: Kind) -> tuple[int, int | None]:
        """``view`` -> (temporal index, spatial crop index or ``None`` for the full frame)."""
        if kind == "image":
            return 0, None
        per_t = self.spatial + int(self.full_frame)
        t, s = divmod(view, per_t)
        return t, (s if s < self.spatial else None)


@dataclasses.dataclass
class SourceContext:
    """Settings every source receives from the data config (not from its own entry)."""

    allow_outside_root: bool = False
    allow_pipe_urls: bool = False
    read_timeout_s: float | None = None   # per read of a shard (data.decode_timeout_s)


class Source:
    """Base class. Subclasses set ``name``, ``weight``, ``views`` and implement :meth:`stream`.

    Class attributes declare what a source type yields, so that evaluation can plan its passes from the
    config alone (``DATASETS.get(type).kinds``), for user-registered sources as for built-in ones:
    ``kinds`` are the kinds of items it may yield, ``has_views`` says that it takes a ``views`` entry (its
    videos get evaluation views), ``labelled`` whether every item must carry a label.
    """

    kinds: ClassVar[tuple[Kind, ...]] = ("image", "video")
    has_views: ClassVar[bool] = False
    labelled: ClassVar[bool] = True   # items without a label are bad samples (False: unlabelled data, label -1)
    name: str = ""
    weight: float = 1.0
    views: ViewsConfig = ViewsConfig()
    task: str | None = None        # the source's task (set from its config entry; None: the run's only task)
    table = None                   # the ClassTable of that task, bound by the loader

    # -- labels (see mmvit/data/classes.py) -----------------------------------------------------------------
    def declared_classes(self) -> list[str] | None:
        """The class order the source itself declares (a dataset's class file), if any."""
        return None

    def declared_num_classes(self) -> int | None:
        """The number of integer classes the source declares, if any."""
        return None

    def label_summary(self) -> tuple[list, list[int], str] | None:
        """``(raw labels, line numbers, file)`` when the source can list its labels cheaply, else ``None``."""
        return None

    def bind(self, table) -> None:
        """Use ``table`` (the run's class table of this source's task) for every label."""
        self.table = table

    def video_fraction(self) -> float:
        """Expected share of videos among the items (sizes training epochs)."""
        return 0.5 if len(self.kinds) > 1 else float(self.kinds[0] == "video")

    def load(self, item: Item, frames: Sequence[int]) -> np.ndarray | None:
        """uint8 ``[T, H, W, 3]`` for items held in memory; ``None`` (the default): decode ``item.src``."""
        return None

    def num_items(self) -> int | None:
        """Number of samples (``None`` when unknown without reading everything)."""
        raise NotImplementedError

    def stream(self, slot: int, num_slots: int, seed: int, sid: int, train: bool) -> Stream:
        raise NotImplementedError

    def iter_all(self) -> Iterator[Item]:
        """Every item once, in order (for tools/check_data.py)."""
        stream = self.stream(0, 1, 0, 0, False)
        while (item := stream.next()) is not None:
            yield item


class Stream:
    """A source's items for one slot. ``next()`` returns ``None`` when a finite (evaluation) stream ends."""

    def next(self) -> Item | None:
        raise NotImplementedError

    def position(self) -> dict[str, Any]:
        raise NotImplementedError

    def seek(self, position: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class IndexedSource(Source):
    """A source with random access: ``len(self)`` items, ``self.item(i)``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int) -> Item:
        raise NotImplementedError

    def num_items(self) -> int:
        return len(self)

    def stream(self, slot: int, num_slots: int, seed: int, sid: int, train: bool) -> Stream:
        return IndexedStream(self, slot, num_slots, seed, sid, train)


class IndexedStream(Stream):
    def __init__(self, source: IndexedSource, slot: int, num_slots: int, seed: int, sid: int, train: bool):
        self.source, self.slot, self.num_slots = source, slot, num_slots
        self.seed, self.sid, self.train = seed, sid, train
        self.cycle, self.k = 0, 0
        self._part: np.ndarray | None = None
        self._part_cycle = -1

    def _get_part(self) -> np.ndarray:
        if self._part_cycle != self.cycle:
            n = len(self.source)
            if self.train:
                perm = rng(Purpose.PERMUTATION, self.seed, self.sid, self.cycle).permutation(n)
                part = perm[self.slot::self.num_slots]
                if len(part) == 0 and n > 0:
                    part = perm[[self.slot % n]]  # fewer items than slots: share rather than starve
            else:
                part = np.arange(self.slot, n, self.num_slots)
            self._part, self._part_cycle = part, self.cycle
        return self._part

    def next(self) -> Item | None:
        part = self._get_part()
        if self.k >= len(part):
            if not self.train or len(part) == 0:
                return None
            self.cycle, self.k = self.cycle + 1, 0
            part = self._get_part()
        index = int(part[self.k])
        self.k += 1
        return self.source.item(index)

    def position(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "k": self.k}

    def seek(self, position: dict[str, Any]) -> None:
        self.cycle, self.k = int(position["cycle"]), int(position["k"])


class StringTable:
    """Many strings in one bytes blob plus offsets: DataLoader workers forked from a process holding a list
    of a million Python strings slowly copy it all (reference counts touch every page); this does not."""

    def __init__(self, strings: list[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i]:self._offsets[i + 1]].decode("utf-8")

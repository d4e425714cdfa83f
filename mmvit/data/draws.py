"""The deterministic, resumable sequence of examples one slot (rank x worker) reads: draw 0, 1, 2, ...

Training mixes sources by weight: draw ``j`` picks its source with a counter-based RNG seeded by
``(seed, slot, j)``, then takes that source's next item, so the sequence depends only on the seed and the
slot, never on timing. Evaluation reads the sources one after the other and expands each video into its
views (one draw per (video, view)).

The state (:meth:`Mixer.state`) is a small dict of stream positions; :meth:`Mixer.seek` returns to it and
replaying draws from there reproduces the same items. The loader uses this to resume: it stores where the
oldest example still waiting in the pack buffer was drawn, and the ids of the waiting ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmvit.data.rng import Purpose, rng
from mmvit.data.sources.base import Item, Source, Stream, ViewsConfig


@dataclasses.dataclass
class Draw:
    j: int             # draw number within the slot
    sid: int           # source index
    item: Item
    view: int          # evaluation view; -1 in training (one random view)
    pre: dict          # mixer state just before this draw (for resuming)


class ViewStream:
    """A source stream that, in evaluation, returns each item once per view."""

    def __init__(self, stream: Stream, views: ViewsConfig, train: bool):
        self.stream, self.views, self.train = stream, views, train
        self.cur: Item | None = None
        self.pre: dict | None = None
        self.v = 0

    def next(self) -> tuple[Item, int] | None:
        if self.train:
            item = self.stream.next()
            return None if item is None else (item, -1)
        if self.cur is None:
            self.pre = self.stream.position()
            self.cur, self.v = self.stream.next(), 0
            if self.cur is None:
                return None
        item, view = self.cur, self.v
        n_views = 1 if item.error is not None else self.views.count(item.kind)
        self.v += 1
        if self.v >= n_views:
            self.cur = None
        return item, view

    def position(self) -> dict[str, Any]:
        if self.cur is None:
            return {"pos": self.stream.position(), "v": 0}
        return {"pos": self.pre, "v": self.v}

    def seek(self, position: dict[str, Any]) -> None:
        self.stream.seek(position["pos"])
        self.cur, self.v = None, 0
        if position["v"] > 0:
            self.pre = position["pos"]
            self.cur, self.v = self.stream.next(), int(position["v"])


class Mixer:
    """Draws from several sources for one slot.

    Args:
        sources: the split's sources.
        slot, num_slots: this (rank, worker) and how many there are.
        seed: run seed.
        train: weighted endless mixing (True) or each source in order, once (False).
    """

    def __init__(self, sources: Sequence[Source], slot: int, num_slots: int, seed: int, train: bool):
        self.streams = [ViewStream(src.stream(slot, num_slots, seed, sid, train), src.views, train)
                        for sid, src in enumerate(sources)]
        w = np.array([src.weight for src in sources], dtype=np.float64)
        self.weights = w / w.sum()
        self.slot, self.seed, self.train = slot, seed, train
        self.j = 0
        self.current = 0                    # evaluation: the source being read
        self.done = [False] * len(sources)  # sources that returned no item (empty for this slot)

    def state(self) -> dict[str, Any]:
        return {"j": self.j, "current": self.current, "done": list(self.done),
                "streams": [s.position() for s in self.streams]}

    def seek(self, state: dict[str, Any]) -> None:
        self.j, self.current, self.done = int(state["j"]), int(state["current"]), list(state["done"])
        for s, pos in zip(self.streams, state["streams"]):
            s.seek(pos)

    def _pick(self) -> int | None:
        live = [i for i, d in enumerate(self.done) if not d]
        if not live:
            return None
        if not self.train:
            return live[0]
        u = rng(Purpose.SOURCE_PICK, self.seed, self.slot, self.j).random()
        w = self.weights[live] / self.weights[live].sum()
        return live[min(int(np.searchsorted(np.cumsum(w), u, side="right")), len(live) - 1)]

    def next(self) -> Draw | None:
        """The next draw, or ``None`` when every source is used up (evaluation) or empty."""
        pre = self.state()
        while (sid := self._pick()) is not None:
            got = self.streams[sid].next()
            if got is None:
                self.done[sid] = True
                continue
            item, view = got
            draw = Draw(j=self.j, sid=sid, item=item, view=view, pre=pre)
            self.j += 1
            return draw
        return None

    def close(self) -> None:
        for s in self.streams:
            s.stream.close()

"""View sets for multi-view testing: ``TxS`` clips x crops (PySlowFast's 10x3), and NaViT's full frame.

A *view set* is how one video is cut into evaluated views; every view becomes its own example and the scores
of all views of a video are aggregated by its id (``mmvit.eval.aggregate``). Spellings:

- ``TxS``: ``T`` temporal clips x ``S`` square crops of the short side, spread along the long side
  (``10x3`` is PySlowFast's test protocol, ``1x1`` a single centre crop).
- ``full``: NaViT's own view, one clip of the whole frame at its native aspect ratio, nothing cropped.
- ``Txfull``: ``T`` temporal clips of the full frame.
- ``TxS+full``: both in one view set (``T * (S + 1)`` views per video, aggregated together).

The data pipeline's video sources take the result of :meth:`ViewSet.source_views` as their ``views`` entry.
Images always have a single view (the full frame).
"""

from __future__ import annotations

import dataclasses
import re

_SPEC = re.compile(r"^(?:(\d+)x(\d+|full)(\+full)?|full)$")


@dataclasses.dataclass(frozen=True)
class ViewSet:
    """``temporal`` clips x (``spatial`` square crops, plus the full frame when ``full_frame``)."""

    temporal: int
    spatial: int
    full_frame: bool

    def __post_init__(self) -> None:
        if self.temporal < 1 or self.spatial < 0 or (self.spatial == 0 and not self.full_frame):
            raise ValueError(f"a view set needs temporal >= 1 and at least one crop or the full frame, got {self}")

    @property
    def name(self) -> str:
        if self.spatial == 0:
            return "full" if self.temporal == 1 else f"{self.temporal}xfull"
        return f"{self.temporal}x{self.spatial}" + ("+full" if self.full_frame else "")

    @property
    def count(self) -> int:
        """Views per video."""
        return self.temporal * (self.spatial + int(self.full_frame))

    def source_views(self) -> dict:
        """The ``views`` entry of a video source in the data config."""
        return {"temporal": self.temporal, "spatial": self.spatial, "full_frame": self.full_frame}


def parse_view_set(spec: str) -> ViewSet:
    """``"4x3"``, ``"full"``, ``"2xfull"`` or ``"4x3+full"`` -> :class:`ViewSet`."""
    m = _SPEC.match(spec.strip().lower())
    if m is None:
        raise ValueError(f"view set {spec!r}: expected TxS (e.g. 4x3), full, Txfull or TxS+full")
    if m.group(1) is None:
        return ViewSet(1, 0, True)
    t = int(m.group(1))
    if m.group(2) == "full":
        return ViewSet(t, 0, True)
    return ViewSet(t, int(m.group(2)), m.group(3) is not None)


def parse_view_sets(specs: str | list[str], add_full: bool = True) -> list[ViewSet]:
    """A comma-separated list (or a list) of view sets; ``full`` is appended unless one is there or
    ``add_full`` is False. Duplicates raise."""
    items = [s for s in (specs.split(",") if isinstance(specs, str) else specs) if str(s).strip()]
    sets = [parse_view_set(str(s)) for s in items]
    if add_full and not any(v.spatial == 0 for v in sets):
        sets.append(ViewSet(1, 0, True))
    names = [v.name for v in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"view sets listed twice: {names}")
    if not sets:
        raise ValueError("no view sets to evaluate")
    return sets

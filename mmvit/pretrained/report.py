"""``LoadReport``: what a pretrained import did with every key, so that nothing is skipped silently."""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass
class LoadReport:
    """The outcome of :func:`mmvit.pretrained.load_pretrained`.

    Every key of the model's state dict is in exactly one of ``loaded``, ``resampled`` or ``initialised``;
    every key of the checkpoint is a source of a loaded or resampled key (see ``sources``) or is in
    ``ignored``.

    Attributes:
        path: the checkpoint file.
        format: its layout (``timm`` or ``mmvit``).
        loaded: model keys copied from the checkpoint (possibly reshaped or folded, see ``notes``).
        resampled: model keys loaded through a change of size: PI-resized or inflated patch kernels,
            resampled position grids.
        initialised: model keys the checkpoint does not provide; they keep the model's initialisation
            (biases the checkpoint lacks are set to zero).
        ignored: checkpoint keys that went nowhere, with the reason in ``reasons``.
        sources: model key -> the checkpoint keys it was computed from.
        notes: model key -> what was done to it, where it is more than a copy.
        reasons: ignored checkpoint key -> why.
        remarks: anything else worth knowing (tensors used in part, converted layouts).
    """

    path: str
    format: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    resampled: list[str] = dataclasses.field(default_factory=list)
    initialised: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    remarks: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the whole model came from the checkpoint and the whole checkpoint went into it."""
        return not self.initialised and not self.ignored

    def summary(self) -> str:
        """Counts, then the keys that were not plainly copied, block indices folded (``blocks.*``)."""
        lines = [f"{self.path} ({self.format}): {len(self.loaded)} loaded, {len(self.resampled)} resampled, "
                 f"{len(self.initialised)} initialised, {len(self.ignored)} ignored"]
        for title, keys, why in (("resampled", self.resampled, self.notes),
                                 ("initialised", self.initialised, self.notes),
                                 ("ignored", self.ignored, self.reasons)):
            for pattern, count, reason in _group(keys, why):
                times = f" x{count}" if count > 1 else ""
                lines.append(f"  {title}: {pattern}{times}" + (f": {reason}" if reason else ""))
        lines += [f"  note: {r}" for r in self.remarks]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_BLOCK = re.compile(r"blocks\.\d+\.")


def _group(keys: list[str], why: dict[str, str]) -> list[tuple[str, int, str]]:
    """Fold keys that differ only in their block index and share a reason (log readability only)."""
    groups: dict[tuple[str, str], int] = {}
    for key in keys:
        reason = _BLOCK.sub("blocks.*.", why.get(key, ""))
        pattern = _BLOCK.sub("blocks.*.", key)
        groups[(pattern, reason)] = groups.get((pattern, reason), 0) + 1
    return [(pattern, count, reason) for (pattern, reason), count in groups.items()]

"""Choosing which waiting examples go into the next ``[rows, seq_len]`` batch.

Candidates are tried oldest first and kept when the chosen set still packs into ``rows`` rows by the same
first-fit-decreasing rule that :func:`mmvit.pack` applies (checked by running it), so ``pack(...,
num_rows=rows)`` never fails. Examples that do not fit wait for the next batch; nothing is dropped. The
oldest waiting example always fits an empty batch (no example is longer than ``seq_len``), so every
example is packed after a bounded wait.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from mmvit.packing import first_fit_decreasing


def select_examples(candidates: Sequence[tuple[Hashable, int]], seq_len: int, rows: int,
                    max_per_row: int | None = None, fixed: Sequence[int] = ()) -> list[Hashable]:
    """Keys of the candidates (``(key, tokens)``, oldest first) to add to a batch already holding ``fixed``.

    Returns the chosen keys in candidate order.
    """
    lengths = list(fixed)
    free = rows * seq_len - sum(lengths)
    slots = None if max_per_row is None else rows * max_per_row - len(lengths)
    smallest = min((n for _, n in candidates), default=0)
    chosen = []
    for key, n in candidates:
        if free < smallest or slots == 0:
            break
        if n > free or n > seq_len:
            continue
        trial = lengths + [n]
        if len(first_fit_decreasing(trial, seq_len, max_per_row)) <= rows:
            lengths = trial
            free -= n
            slots = None if slots is None else slots - 1
            chosen.append(key)
    return chosen

"""Choosing which waiting examples go into the next ``[rows, seq_len]`` batch (and, for masked pretraining,
into its ``[full_rows, full_seq_len]`` packing of all tokens as well).

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


def select_masked(candidates: Sequence[tuple[Hashable, int, int]], seq_len: int, rows: int, full_seq_len: int,
                  full_rows: int, max_per_row: int | None = None,
                  fixed: Sequence[tuple[int, int]] = ()) -> list[Hashable]:
    """Keys of the candidates (``(key, visible tokens, all tokens)``, oldest first) for a masked batch: the
    visible tokens must pack into ``[rows, seq_len]`` and all tokens into ``[full_rows, full_seq_len]``.

    Examples differ in how many of their tokens are visible (75% of an image is masked, 90% of a clip), so
    filling one packing oldest first can leave the other half empty. After the oldest candidate that fits,
    each pick prefers (oldest first) the candidates that fill the packing that is behind in the fraction of
    its slots used; a candidate that no longer fits is not tried again (the room only shrinks). The oldest
    waiting example always opens a batch, so none waits for ever. Returns the chosen keys in candidate order.
    """
    enc, full = [e for e, _ in fixed], [f for _, f in fixed]
    cap_e, cap_f = rows * seq_len, full_rows * full_seq_len
    pool = list(candidates)
    chosen: set = set()

    def fits(n_e: int, n_f: int) -> bool:
        if n_e > seq_len or n_f > full_seq_len or sum(enc) + n_e > cap_e or sum(full) + n_f > cap_f:
            return False
        if max_per_row is not None and len(enc) + 1 > min(rows, full_rows) * max_per_row:
            return False
        return (len(first_fit_decreasing(enc + [n_e], seq_len, max_per_row)) <= rows and
                len(first_fit_decreasing(full + [n_f], full_seq_len, max_per_row)) <= full_rows)

    while pool:
        order = pool
        if enc:
            enc_behind = sum(enc) / cap_e < sum(full) / cap_f
            ahead = [c for c in pool if (c[1] / cap_e > c[2] / cap_f) == enc_behind]
            order = ahead + [c for c in pool if (c[1] / cap_e > c[2] / cap_f) != enc_behind]
        picked = None
        for c in order:
            if fits(c[1], c[2]):
                picked = c
                break
            pool.remove(c)
        if picked is None:
            break
        pool.remove(picked)
        chosen.add(picked[0])
        enc.append(picked[1])
        full.append(picked[2])
    return [c[0] for c in candidates if c[0] in chosen]

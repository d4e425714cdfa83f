"""Packing: padding fraction and examples per row, one-shot and streaming, and the packer's speed.

One-shot: ``mmvit.pack`` of a large set, first-fit-decreasing over all of it; the last rows come out part
empty. Streaming: what a loader does batch after batch. A buffer holds candidates; each batch takes ``B`` rows
of first-fit-decreasing over the buffer, and examples that fit none of the ``B`` rows wait for the next batch
while new ones refill the buffer. NaViT's "under 2% padding" is a streaming figure.
"""

from __future__ import annotations

import time

import numpy as np

import mmvit
from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median
from mmvit.bench.images import make_images, sample_sizes, token_counts
from mmvit.packing import first_fit_decreasing


def one_shot(lengths: list[int], seq_len: int) -> dict:
    rows = first_fit_decreasing(lengths, seq_len)
    return {"padding": 1.0 - sum(lengths) / (len(rows) * seq_len), "per_row": len(lengths) / len(rows)}


def streaming(lengths: list[int], seq_len: int, rows_per_batch: int, buffer: int, skip: int = 5) -> dict:
    """Pack a stream of examples ``rows_per_batch`` rows at a time from a buffer of ``buffer`` candidates.

    The first ``skip`` batches are not counted (the buffer starts full of fresh examples). Rows of
    first-fit-decreasing over the buffer restricted to ``B`` rows are the first ``B`` rows of unrestricted
    first-fit-decreasing: an item placed in a later row fitted none of the earlier ones when it was placed.
    """
    stream = iter(lengths)
    pool: list[int] = []
    used = slots = examples = batches = 0
    waited = 0  # examples carried to a later batch, summed over batches
    while True:
        pool += [n for _, n in zip(range(buffer - len(pool)), stream)]
        if len(pool) < buffer:
            break  # stream exhausted: stop before the drain, which is the one-shot case
        rows = first_fit_decreasing(pool, seq_len)[:rows_per_batch]
        taken = {i for row in rows for i in row}
        if batches >= skip:
            used += sum(pool[i] for i in taken)
            slots += rows_per_batch * seq_len
            examples += len(taken)
            waited += len(pool) - len(taken)
        pool = [n for i, n in enumerate(pool) if i not in taken]
        batches += 1
    counted = max(1, batches - skip)
    return {"padding": 1.0 - used / max(1, slots), "per_row": examples / max(1, counted * rows_per_batch),
            "batches": counted, "carried": waited / counted}


def linear_first_fit_decreasing(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Reference first fit with a linear scan over rows (what ``first_fit_decreasing`` replaced)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, room in enumerate(free):
            if room >= n:
                rows[r].append(i)
                free[r] = room - n
                break
        else:
            rows.append([i])
            free.append(seq_len - n)
    return rows


def run(tiny: bool = False, repeats: int = 5, seed: int = 0) -> Report:
    t_start = time.perf_counter()
    n_set = 600 if tiny else 20_000
    n_stream = 1_500 if tiny else 60_000
    n_speed = 2_000 if tiny else 100_000
    n_images = 24 if tiny else 512
    report = Report("pack", params={"patch": 16, "side": [64, 256], "one_shot_examples": n_set,
                                    "stream_examples": n_stream, "tokens_per_batch": 8192})
    lengths = token_counts(sample_sizes(max(n_set, n_stream, n_speed), seed=seed))
    report.notes.append(f"tokens per example: mean {np.mean(lengths):.1f}, min {min(lengths)}, max {max(lengths)} "
                        f"(side U(64, 256), aspect mix in mmvit/bench/images.py, patch 16)")

    pad = Table("Padding and examples per row", [
        Column("seq_len", "seq_len"), Column("mode", "packing"), Column("buffer", "buffer"),
        Column("padding", "padding", "{:.2%}"), Column("per_row", "examples/row", "{:.2f}"),
        Column("carried", "carried/batch", "{:.1f}")])
    for seq_len in (256, 1024):
        r = one_shot(lengths[:n_set], seq_len)
        pad.rows.append({"seq_len": seq_len, "mode": "one-shot pack()", "buffer": f"{n_set} (all)", **r})
        report.bars.append(Bar(f"padding, one-shot, seq_len {seq_len}", r["padding"], "<=", 0.02, "%"))
        b = 8192 // seq_len  # rows per batch: 8192 tokens per batch
        per_batch = round(b * seq_len / np.mean(lengths))
        for factor in (1, 2, 4):
            r = streaming(lengths[:n_stream], seq_len, b, factor * per_batch)
            pad.rows.append({"seq_len": seq_len, "mode": f"streaming, {b} rows/batch",
                             "buffer": f"{factor * per_batch} ({factor}x batch)", **r})
            if factor == 2:
                report.bars.append(Bar(f"padding, streaming (buffer 2x batch), seq_len {seq_len}", r["padding"],
                                       "<=", 0.02, "%"))
    report.tables.append(pad)

    speed = Table("Packer speed", [
        Column("what", "what"), Column("seq_len", "seq_len"), Column("n", "examples"),
        Column("ms", "median ms", "{:.1f}"), Column("rate", "examples/s", "{:,.0f}"),
        Column("gbs", "GB/s written", "{:.2f}")])
    ffd_rate = {}
    for seq_len in (256, 1024):
        subset = lengths[:n_speed]
        t = interleaved({"ffd": lambda s=subset, n=seq_len: first_fit_decreasing(s, n)}, warmup=1,
                        repeats=repeats)["ffd"]
        ffd_rate[seq_len] = n_speed / median(t)
        speed.rows.append({"what": "first_fit_decreasing", "seq_len": seq_len, "n": n_speed, "ms": 1e3 * median(t),
                           "rate": ffd_rate[seq_len]})
        small = lengths[: n_speed // 20]
        t = interleaved({"ref": lambda s=small, n=seq_len: linear_first_fit_decreasing(s, n)}, warmup=0,
                        repeats=1)["ref"]
        speed.rows.append({"what": "first fit, linear scan (reference)", "seq_len": seq_len, "n": len(small),
                           "ms": 1e3 * median(t), "rate": len(small) / median(t)})
    report.bars.append(Bar("first_fit_decreasing speed (100k examples, seq_len 1024)",
                           ffd_rate[1024], ">=", 100_000, "examples/s"))

    images = make_images(sample_sizes(n_images, seed=seed + 1), seed=seed)
    for seq_len in (256, 1024):
        batch = mmvit.pack(images, patch_size=16, seq_len=seq_len)
        assert abs(batch.padding_fraction - one_shot(token_counts([tuple(x.shape[1:]) for x in images]),
                                                     seq_len)["padding"]) < 1e-9
        t = median(interleaved({"pack": lambda n=seq_len: mmvit.pack(images, patch_size=16, seq_len=n)},
                               warmup=1, repeats=repeats)["pack"])
        speed.rows.append({"what": "pack() of images (patchify + pack)", "seq_len": seq_len, "n": n_images,
                           "ms": 1e3 * t, "rate": n_images / t, "gbs": batch.patches.numel() * 4 / t / 1e9})
    report.tables.append(speed)
    report.notes.append("pack() copies every pixel once into its row; its rate is bound by memory bandwidth "
                        "(GB/s column), not by the packer.")
    report.seconds = time.perf_counter() - t_start
    return report

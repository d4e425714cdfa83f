"""Attention over one packed row: ``segments`` against ``dense``, forward and backward, time and peak memory.

A row of ``L`` tokens holds ``E`` examples of random lengths (a random split of ``L``). Heads 3 of width 64
(the benchmark model's width 192). Variants:

- ``segments``: mmvit's CPU backend, one SDPA call per distinct length, cost ``sum(L_i^2)``.
- ``dense``: one SDPA call over the row with the ``[L, L]`` block-diagonal boolean mask, cost ``L^2``.
- ``bucketed``: an alternative measured and not adopted: examples of similar length padded to the longest of
  their bucket and run in one call with a key-padding mask (exact: padded keys are masked, padded queries
  dropped). It trades wasted work for fewer calls.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median, peak_rss_growth, ratio
from mmvit.models.attention import attend_dense, attend_segments
from mmvit.models.layout import SeqLayout, build_layout


def row_lengths(total: int, examples: int, rng: np.random.Generator) -> list[int]:
    """A random split of ``total`` tokens into ``examples`` lengths (each at least 1)."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=examples - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]])).tolist()


def segment_ids(rows: list[list[int]], seq_len: int) -> torch.Tensor:
    """``[B, seq_len]`` segment ids for rows of example lengths (ids from 1, padding 0)."""
    out = torch.zeros(len(rows), seq_len, dtype=torch.long)
    e = 1
    for r, lengths in enumerate(rows):
        pos = 0
        for n in lengths:
            out[r, pos:pos + n] = e
            pos, e = pos + n, e + 1
    return out


def buckets(groups: list[tuple[int, int, int]], slack: float) -> list[list[tuple[int, int, int]]]:
    """Merge runs of length groups (ascending) while padded work ``m * Lmax^2`` stays within ``1 + slack``
    times the exact work ``sum(n * l^2)``."""
    out: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    for g in groups:
        cand = cur + [g]
        m, longest = sum(n for _, n, _ in cand), g[2]
        exact = sum(n * length * length for _, n, length in cand)
        if cur and m * longest * longest > (1 + slack) * exact:
            out.append(cur)
            cand = [g]
        cur = cand
    return out + [cur] if cur else out


def attend_bucketed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SeqLayout, slack: float = 0.25
                    ) -> torch.Tensor:
    """Exact attention with examples of similar length padded into one call per bucket. ``[N, H, d]``."""
    h, d = q.shape[1:]
    parts = buckets(layout.groups, slack)
    sizes = [sum(n * length for _, n, length in b) for b in parts]
    outs = []
    for qs, ks, vs, b in zip(q.split(sizes), k.split(sizes), v.split(sizes), parts):
        longest, m = b[-1][2], sum(n for _, n, _ in b)
        if len(b) == 1:
            qs, ks, vs = (t.view(m, longest, h, d).transpose(1, 2) for t in (qs, ks, vs))
            outs.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2).reshape(m * longest, h, d))
            continue
        lens = torch.tensor([length for _, n, length in b for _ in range(n)])
        slot = torch.arange(longest)
        valid = slot[None, :] < lens[:, None]                                    # [m, Lmax]
        src = torch.where(valid, (torch.cumsum(lens, 0) - lens)[:, None] + slot[None, :], 0).reshape(-1)
        qp, kp, vp = (t.index_select(0, src).view(m, longest, h, d).transpose(1, 2) for t in (qs, ks, vs))
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=valid[:, None, None, :])
        outs.append(o.transpose(1, 2).reshape(m * longest, h, d)[valid.reshape(-1)])
    return torch.cat(outs)


VARIANTS = {"segments": attend_segments, "dense": attend_dense, "bucketed": attend_bucketed}


def run(tiny: bool = False, repeats: int = 9, seed: int = 0, heads: int = 3, head_dim: int = 64) -> Report:
    t_start = time.perf_counter()
    configs = [(128, 4), (128, 16)] if tiny else [(length, e) for length in (1024, 4096) for e in (4, 8, 16, 32)]
    report = Report("attention", params={"heads": heads, "head_dim": head_dim, "dtype": "float32",
                                         "threads": torch.get_num_threads()})
    table = Table("Attention forward + backward, one packed row", [
        Column("L", "L"), Column("E", "examples"), Column("variant", "variant"), Column("ms", "median ms", "{:.1f}"),
        Column("speedup", "dense / this (time, per round)", "{:.2f}x"), Column("mib", "peak MiB", "{:.1f}"),
        Column("mem_ratio", "dense / this (memory)", "{:.1f}x"), Column("mask_mib", "mask MiB", "{:.1f}"),
        Column("err", "max |out - dense| / max |dense|", "{:.0e}")])
    rng = np.random.default_rng(seed)
    worst_speed, worst_mem = None, None
    bucket_ratio: list[float] = []
    for length, e in configs:
        seg = segment_ids([row_lengths(length, e, rng)], length)
        gen = torch.Generator().manual_seed(seed)
        base = [torch.randn(length, heads, head_dim, generator=gen) for _ in range(4)]
        inputs = {name: [t.clone().requires_grad_() for t in base[:3]] for name in VARIANTS}

        def step(name: str, seg: torch.Tensor = seg, inputs: dict = inputs, base: list = base) -> None:
            q, k, v = inputs[name]
            layout = build_layout(seg)  # per call, as in a forward: the dense mask is built (and held) anew
            VARIANTS[name](q, k, v, layout).backward(base[3])
            for t in inputs[name]:
                t.grad = None

        times = interleaved({name: (lambda n=name: step(n)) for name in VARIANTS}, warmup=1, repeats=repeats,
                            budget_s=10.0)
        mem = {name: peak_rss_growth(lambda n=name: step(n)) for name in VARIANTS}
        # The variants compute the same attention: their outputs are compared with dense's on the same inputs.
        with torch.no_grad():
            outs = {name: VARIANTS[name](*base[:3], build_layout(seg)) for name in VARIANTS}
        scale = float(outs["dense"].abs().max())
        err = {name: float((o - outs["dense"]).abs().max()) / scale for name, o in outs.items()}
        ms = {name: 1e3 * median(t) for name, t in times.items()}
        bucket_ratio.append(ratio(times, "bucketed", "segments"))
        report.raw[f"L{length}_E{e}"] = {"seconds_per_round": times, "peak_bytes": mem}
        for name in VARIANTS:
            row = {"L": length, "E": e, "variant": name, "ms": ms[name], "speedup": ratio(times, "dense", name),
                   "mask_mib": length * length / 2**20 if name == "dense" else 0.0, "err": err[name]}
            if mem[name] is not None:
                row["mib"] = mem[name] / 2**20
                row["mem_ratio"] = mem["dense"] / max(mem[name], 1)
            table.rows.append(row)
        if length == max(c[0] for c in configs) and e >= (16 if not tiny else 4):
            sp = ratio(times, "dense", "segments")
            worst_speed = sp if worst_speed is None else min(worst_speed, sp)
            if mem["segments"] is not None:
                mr = mem["dense"] / max(mem["segments"], 1)
                worst_mem = mr if worst_mem is None else min(worst_mem, mr)
    report.tables.append(table)
    top = max(c[0] for c in configs)
    report.bars.append(Bar(f"segments vs dense, time, L={top}, 16+ examples (worst case)", worst_speed, ">=", 3.0))
    report.bars.append(Bar(f"segments vs dense, peak memory, L={top}, 16+ examples (worst case)", worst_mem,
                           ">=", 4.0))
    report.notes.append("Peak memory: growth of the process' peak resident set (VmHWM, reset through "
                        "/proc/self/clear_refs after malloc_trim) during one forward+backward after warm-up, with "
                        "the layout built in the call as a forward builds it. It includes the q, k, v gradients and "
                        "the output, the same for every variant. 'mask MiB': the dense backend's boolean [L, L] "
                        "mask alone.")
    mid = float(np.median(bucket_ratio))
    verdict = ("SDPA's per-call cost on CPU is small next to the padded work and the gather/scatter bucketing "
               "needs, so segments stays unbucketed" if mid >= 1.0 else "bucketing is faster here in the median")
    report.notes.append(f"bucketed (slack 0.25) / segments time: {min(bucket_ratio):.2f} to {max(bucket_ratio):.2f} "
                        f"(median {mid:.2f}): {verdict}.")
    report.seconds = time.perf_counter() - t_start
    return report

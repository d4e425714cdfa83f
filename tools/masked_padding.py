"""Padding of a masked-pretraining config's two packings, per curriculum stage.

    python tools/masked_padding.py --config configs/pretrain/demo_jepa.yaml [--batches 300] [--decode 20]

Padding depends only on which examples each batch takes, and the selection depends only on the planned token
counts (visible and all), not on pixels. So by default this drives the training stream's own worker (its
buffer, per-example plans with masks, and ``select_masked``) without decoding, through the stages of the
config's curriculum in order (one worker, as in a run: a stage starts from the buffer the previous one
left), for each stage its steps or ``--batches`` batches, whichever is fewer: seconds instead of minutes of
video decoding, and the same batches as the loader gives when no sample fails to decode. The schedule's mean
weights each stage by its steps. A buffer of ``pack_buffer`` examples cannot make up for a stream whose
visible/all token ratio differs from the two packings' capacity ratio: one packing then pads by about that
mismatch however the selection chooses (``data.fit_full_rows`` sizes the full rows per stage to avoid it). ``--decode N`` also reads N batches per stage
through the real loader (one worker) and reports their padding from the packed batches' own segment ids, as
a check of the fast path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import mmvit  # noqa: E402
from mmvit.data import build_loader, resolve_data_config  # noqa: E402
from mmvit.data.classes import resolve_class_tables  # noqa: E402
from mmvit.data.stage import make_stage  # noqa: E402
from mmvit.data.stream import _Worker  # noqa: E402
from mmvit.pretrain import MaskConfig  # noqa: E402
from mmvit.train.curriculum import build_curriculum, segments  # noqa: E402


def masked_data(cfg) -> dict:
    """The config's data section with the objective's mask, as the trainer hands it to the loader."""
    data = cfg.to_dict()["data"]
    data["mask"] = dataclasses.asdict(MaskConfig.from_dict((cfg.get("objective") or {}).get("mask")))
    data["persistent_workers"] = False
    return data


def stages(cfg, data: dict) -> list[tuple[str, int, int, object]]:
    """(name, first step, steps, Stage) of each distinct stage of the curriculum, in schedule order."""
    steps = int(cfg.get("train")["steps"])
    cur = build_curriculum(cfg.get("curriculum"), total_steps=steps, data=resolve_data_config(data, "train"))
    out: dict[str, list] = {}
    for seg in segments(cur, steps):
        row = out.setdefault(seg["name"], [seg["name"], seg["start"], 0, cur(seg["start"])])
        row[2] += seg["end"] - seg["start"]
    return [tuple(r) for r in out.values()]


def selection_padding(data: dict, tables, schedule, n: int, seed: int) -> list[tuple[list[float], list[float], list[int]]]:
    """Per stage of ``schedule`` (in order, one worker carried through all of them as in a run, so each stage
    starts from the buffer the previous one left), per batch: encoder-row padding, full-row padding, examples;
    from the stream's selection alone (with ``data.fit_full_rows``, the full rows at the length the worker
    chose for the stage)."""
    loader, _ = build_loader(data, split="train", rank=0, world_size=1, seed=seed, stage=schedule[0][3], train=True,
                             tables=tables)
    ds = loader.dataset
    cfg = ds.cfg
    worker = _Worker(ds, 0, 1)
    cap_e = cfg.batch_rows * cfg.seq_len
    out, g = [], 0
    try:
        for sid, (_, _, steps, stage) in enumerate(schedule):
            st = make_stage(cfg, stage)
            pad_e, pad_f, count = [], [], []
            for _ in range(min(n, steps)):
                worker.refill()
                patch = worker.patch_for(g, st)
                plans = {w.draw.j: worker.plan(w, st, patch) for w in worker.waiting}
                keys = set(worker._select_masked(plans, [], sid, st, patch))
                assert keys, "an empty batch"
                cap_f = cfg.full_batch_rows * worker.full_len(sid)
                pad_e.append(1 - sum(plans[k].kept for k in keys) / cap_e)
                pad_f.append(1 - sum(plans[k].tokens for k in keys) / cap_f)
                count.append(len(keys))
                worker.waiting = [w for w in worker.waiting if w.draw.j not in keys]
                g += 1
            out.append((pad_e, pad_f, count))
    finally:
        worker.close()
    return out


def loader_padding(data: dict, tables, stage, n: int, seed: int) -> tuple[list[float], list[float]]:
    """Per batch of the real loader (one worker): padding of both packings from their segment ids."""
    loader, _ = build_loader({**data, "num_workers": 1}, split="train", rank=0, world_size=1, seed=seed,
                             stage=stage, train=True, tables=tables)
    it = iter(loader)
    pad_e, pad_f = [], []
    for _ in range(n):
        b = next(it)
        pad_e.append(float((b.segment_ids == 0).double().mean()))
        pad_f.append(float((b.full.segment_ids == 0).double().mean()))
    del it
    return pad_e, pad_f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", default=[], help="config overrides (key=value)")
    p.add_argument("--batches", type=int, default=300, help="batches per stage at most (selection only)")
    p.add_argument("--decode", type=int, default=0, help="also this many batches per stage through the loader")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = mmvit.load_config(args.config, list(args.set))
    data = masked_data(cfg)
    tables = resolve_class_tables(cfg)  # labels are read, not used
    r = resolve_data_config(data, "train")
    print(f"{args.config}: encoder rows [{r.batch_rows}, {r.seq_len}], full rows [{r.full_batch_rows}, "
          f"{r.full_seq_len}], pack_buffer {r.pack_buffer}; {args.batches} batches per stage")
    print(f"{'stage':<14} {'step':>5} {'enc mean':>9} {'enc max':>8} {'full mean':>9} {'full max':>8} "
          f"{'ex/batch':>8}" + (f" {'enc (loader)':>12} {'full (loader)':>13}" if args.decode else ""))
    schedule = stages(cfg, data)
    weighted = []
    for (name, start, steps, stage), (pe, pf, cnt) in zip(schedule, selection_padding(data, tables, schedule,
                                                                                      args.batches, args.seed)):
        weighted.append((steps, np.mean(pe), np.mean(pf)))
        line = (f"{name:<14} {start:>5} {np.mean(pe):>9.2%} {np.max(pe):>8.2%} {np.mean(pf):>9.2%} "
                f"{np.max(pf):>8.2%} {np.mean(cnt):>8.1f}")
        if args.decode:
            le, lf = loader_padding(data, tables, stage, args.decode, args.seed)
            line += f" {np.mean(le):>12.2%} {np.mean(lf):>13.2%}"
        print(line, flush=True)
    w = np.array([x[0] for x in weighted], dtype=float)
    mean_e = float(np.dot(w, [x[1] for x in weighted]) / w.sum())
    mean_f = float(np.dot(w, [x[2] for x in weighted]) / w.sum())
    print(f"{'by steps':<14} {'':>5} {mean_e:>9.2%} {'':>8} {mean_f:>9.2%}   (stages weighted by their steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scan a dataset before training: the class table of every task, samples per class, and every bad sample.

    python tools/check_data.py configs/X.yaml [--split train] [--all-frames] [--limit N] [--set data.k=v ...]

Prints the class table the run would use for each task (from ``tasks:`` or the training split, as training
fixes it; a run's own config.yaml holds its tables) with the samples per class in the training split and in
the checked split, and flags classes with no training sample. Then goes through every sample of the split
with the loader's own checks (labels, root escapes, headers, decoding under the time limit, with the
loader's decord-to-PyAV fallback) and prints ``BAD <cause>: <path> (<detail>)`` per bad sample, then counts
per cause. Exit status 0 when every sample is good, 1 otherwise (a class table that cannot be built, e.g. a
list mixing integers and names, is an error with its file and line).
"""

from __future__ import annotations

import argparse
import sys

from mmvit.config import load_config
from mmvit.data.check import label_counts, scan
from mmvit.data.classes import resolve_class_tables, tables_of


def print_tables(tables, train_counts, split_counts, split: str) -> list[str]:
    """The class tables with per-class counts; returns the warnings (classes without training samples)."""
    warnings = []
    for task, table in tables.items():
        print(f"task {task!r}: {len(table)} classes ({table.origin})")
        train, here = train_counts.get(task, {}), split_counts.get(task, {})
        width = max([len(n) for n in table.names] + [5])
        print(f"  {'index':>5}  {'class':<{width}}  {'train':>7}" + (f"  {split:>7}" if split != "train" else ""))
        for i, name in enumerate(table.names):
            line = f"  {i:>5}  {name:<{width}}  {train.get(i, 0):>7}"
            print(line + (f"  {here.get(i, 0):>7}" if split != "train" else ""))
        empty = [n for i, n in enumerate(table.names) if not train.get(i)]
        if empty:
            warnings.append(f"task {task!r}: {len(empty)} class(es) with no training sample: {', '.join(empty[:20])}"
                            + (" ..." if len(empty) > 20 else ""))
    return warnings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config with a data: section")
    p.add_argument("--split", default="train")
    p.add_argument("--all-frames", action="store_true", help="decode every frame of every video (slow, thorough)")
    p.add_argument("--limit", type=int, default=None, help="check only the first N samples")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.video_backend=pyav")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    data = cfg.get("data") or {}
    splits = data.get("splits") or {}
    has_train = "train" in splits or not splits
    try:
        tables = tables_of(cfg) or resolve_class_tables(cfg, "train" if has_train else args.split)
    except (ValueError, KeyError) as e:
        print(f"ERROR: no class table: {e}")
        return 1
    if not has_train:
        print(f"note: the config has no training split; the class tables come from split {args.split!r}")
    train_counts = label_counts(data, "train", tables) if has_train else {}
    report = scan(data, args.split, all_frames=args.all_frames, limit=args.limit, tables=tables)
    warnings = print_tables(tables, train_counts, report.per_class, args.split)
    for w in warnings:
        print(f"WARNING: {w}")
    total = report.good + len(report.bad)
    print(f"{total} samples checked: {report.good} good, {len(report.bad)} bad")
    for cause, n in sorted(report.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {cause}: {n}")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())

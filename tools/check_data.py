"""Scan a dataset before training and list every bad sample with its reason.

    python tools/check_data.py configs/X.yaml [--split train] [--all-frames] [--limit N] [--set data.k=v ...]

Reads the config's ``data:`` section, goes through every sample of the split with the loader's own checks
(labels, root escapes, headers, decoding under the time limit) and prints ``BAD <cause>: <path> (<detail>)``
per bad sample, then counts per cause. Exit status 0 when every sample is good, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from mmvit.config import load_config
from mmvit.data.check import scan


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
    report = scan(cfg.get("data") or {}, args.split, all_frames=args.all_frames, limit=args.limit)
    total = report.good + len(report.bad)
    print(f"{total} samples checked: {report.good} good, {len(report.bad)} bad")
    for cause, n in sorted(report.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {cause}: {n}")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())

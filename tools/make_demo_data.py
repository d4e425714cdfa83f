"""Build the demo dataset (task digits: images, labels 0-9; task motion: moving-digit videos, labels N..NW) for ``make demo``.

    python tools/make_demo_data.py --out data/demo [--seed 0] [--images-per-split 4500,300,600]
        [--videos-per-split 960,160,320] [--no-shards] [--force]

Takes about 30-60 s (one process) with the default counts and writes about 140 MB. Skips the work when ``out``
already holds a dataset built with the same seed, counts and shard setting. See docs/demo_data.md.
"""

from __future__ import annotations

import argparse
import sys

from mmvit.demo import digits as demo_data


def _counts(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected three non-negative ints 'train,val,test', got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _summary(manifest: dict) -> str:
    lines = [f"{'split':<6} {'images':>7} {'videos':>7} {'scans':>6}  shards"]
    for split, s in manifest["splits"].items():
        lines.append(f"{split:<6} {s['images']:>7} {s['videos']:>7} {s['scans']:>6}  {len(s['shards'])}")
    lines.append(
        f"tasks: digits (images, 0-9), motion (videos, {' '.join(manifest['tasks']['motion']['classes'])}); "
        f"seed {manifest['seed']}, built in {manifest['build_seconds']} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo", help="data root (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--images-per-split", type=_counts, default=demo_data.DEFAULT_COUNTS["images"], metavar="TRAIN,VAL,TEST"
    )
    parser.add_argument(
        "--videos-per-split", type=_counts, default=demo_data.DEFAULT_COUNTS["videos"], metavar="TRAIN,VAL,TEST"
    )
    parser.add_argument("--no-shards", action="store_true", help="write files and lists only")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    args = parser.parse_args(argv)

    counts = {"images": args.images_per_split, "videos": args.videos_per_split}
    shards = not args.no_shards
    manifest = None if args.force else demo_data.current_manifest(args.out, args.seed, counts, shards)
    if manifest is not None:
        print(f"{args.out}: up to date (seed {args.seed}, same counts); nothing to do. --force rebuilds.")
    else:
        print(f"building {args.out} ...", flush=True)
        manifest = demo_data.build(args.out, args.seed, counts, shards=shards)
    print(_summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())

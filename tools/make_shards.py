"""Write webdataset shards from a list file, keeping the encoded bytes and a JSON sidecar per sample.

    python tools/make_shards.py data/train.txt --out shards/train-%06d.tar [--root data] [--maxcount 1000]
        [--maxsize 1e9] [--shuffle --seed 0] [--classes classes.txt]

The list holds ``path label`` lines or CSV (Kinetics annotations included); images and videos may mix.
Unreadable files are skipped with their reason. Next to the shards, ``<prefix>.json`` lists them with the
sample count: point a ``webdataset`` source at it with ``index:``.
"""

from __future__ import annotations

import argparse
import sys

from mmvit.data.shards import write_shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("list", help="list file: 'path label' lines or CSV")
    p.add_argument("--out", required=True, help="shard pattern, e.g. shards/train-%%06d.tar")
    p.add_argument("--root", default=None, help="folder relative paths resolve against (default: the list's)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard")
    p.add_argument("--shuffle", action="store_true", help="shuffle samples before writing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=None, help="text file of class names (one per line) for named labels")
    p.add_argument("--allow-outside-root", action="store_true", help="accept paths that leave --root")
    args = p.parse_args(argv)
    if "%" not in args.out:
        p.error("--out needs a %d-style shard number, e.g. shards/train-%06d.tar")
    index = write_shards(args.list, args.out, root=args.root, maxcount=args.maxcount, maxsize=args.maxsize,
                         shuffle=args.shuffle, seed=args.seed, classes=args.classes,
                         allow_outside_root=args.allow_outside_root,
                         report=lambda line: print(line, file=sys.stderr))
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shards, skipped {index['skipped']}; "
          f"index: {index['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

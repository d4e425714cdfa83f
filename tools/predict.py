"""Predict the classes of image and video files with a trained model.

    python tools/predict.py --checkpoint runs/demo FILE_OR_DIR_OR_LIST ... [--task T] [--topk 5] [--out preds.csv]
    torchrun --nproc_per_node 2 tools/predict.py --checkpoint runs/demo data/videos/ --out preds.json

FILE_OR_DIR_OR_LIST: media files, folders (searched recursively for images and videos) or .txt lists (one
path per line). Every file is read at its native resolution with the model's own preprocessing (its
config's data section), packed many per batch; a video's views (``--views``, default the full frame) are
averaged. Prints the top classes with their probabilities; files that cannot be read are listed with
their reason (exit status 1 when there are any). ``--out`` writes ``.csv`` or ``.json``. See
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mmvit import dist  # noqa: E402
from mmvit.loading import load  # noqa: E402
from mmvit.predict import PredictSettings, predict  # noqa: E402


def write(path: str, predictions: list[dict], failures: list[dict]) -> None:
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump({"predictions": predictions, "failures": failures}, f, indent=1)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "task", "kind", "views", "class", "probability", "top_classes", "top_probabilities"])
        for p in predictions:
            w.writerow([p["path"], p["task"], p["kind"], p["views"], p["top"][0][0], f"{p['top'][0][1]:.6f}",
                        " ".join(n for n, _ in p["top"]), " ".join(f"{v:.6f}" for _, v in p["top"])])
        for fail in failures:
            w.writerow([fail["path"], "", "", 0, "", "", f"BAD {fail['cause']}", fail["detail"]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="media files, folders or .txt lists of paths")
    p.add_argument("--checkpoint", required=True, help="a run dir, model.safetensors, or a DeepSpeed checkpoint")
    p.add_argument("--config", default=None, help="config to use instead of the one saved with the checkpoint")
    p.add_argument("--task", default=None, help="the task (head) to predict with; default: every task")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--views", default="full", help="view set for videos, e.g. full, 2x3, 4x3+full")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--token-budget", type=int, default=None, help="tokens per example")
    level.add_argument("--resolution", type=float, default=None, help="side length in px")
    p.add_argument("--batch-rows", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--out", default=None, help="write .csv or .json")
    p.add_argument("--device", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    rank, world, local_rank = dist.start_tool_group(args.local_rank)
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(message)s")
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    loaded = load(args.checkpoint, args.config, args.overrides, device=device)
    settings = PredictSettings(topk=args.topk, task=args.task, views=args.views, token_budget=args.token_budget,
                               resolution=args.resolution, batch_rows=args.batch_rows, num_workers=args.num_workers)
    out = predict(loaded.model, loaded.cfg, loaded.tables, args.files, settings, rank=rank, world_size=world,
                  device=device)
    parts = dist.all_gather_object(out)
    code = 0
    if rank == 0:
        predictions = sorted((q for part in parts for q in part["predictions"]), key=lambda q: (q["path"], q["task"]))
        failures = sorted((f for part in parts for f in part["failures"]), key=lambda f: f["path"])
        for q in predictions:
            top = ", ".join(f"{n} {v:.3f}" for n, v in q["top"])
            print(f"{q['path']}  [{q['task']}]  {top}")
        for f in failures:
            print(f"BAD {f['cause']}: {f['path']} ({f['detail']})")
        print(f"{len({q['path'] for q in predictions})} files predicted, {len(failures)} could not be read")
        if args.out:
            write(args.out, predictions, failures)
            print(f"wrote {args.out}")
        code = 1 if failures else 0
    dist.end_tool_group()
    return code


if __name__ == "__main__":
    sys.exit(main())

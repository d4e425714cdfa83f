"""Command line of tools/eval_video.py and tools/eval_image.py: arguments, ranks, and the end-to-end run.

    python tools/eval_video.py --checkpoint runs/demo [--config C] [--views 4x3] [--token-budgets 64,128,256]
    deepspeed --num_gpus 2 tools/eval_video.py --checkpoint runs/demo ...      (shards the data over ranks)

With ``WORLD_SIZE > 1`` (set by the deepspeed launcher or torchrun) torch.distributed starts with gloo, each
rank evaluates its share, and rank 0 gathers the per-view scores of all ranks, aggregates them per video id
(checking that no view is missing or counted twice), writes the results and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import torch

log = logging.getLogger("mmvit.eval")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser(kind: str = "video") -> argparse.ArgumentParser:
    what = "videos (multi-view)" if kind == "video" else "images"
    parser = argparse.ArgumentParser(
        description=f"Evaluate a checkpoint on {what} at several token budgets or resolutions.",
        epilog="See docs/evaluation.md.")
    parser.add_argument("--checkpoint", required=True,
                        help="model.safetensors (config.yaml beside it), a run dir, or a DeepSpeed checkpoint dir")
    parser.add_argument("--config", default=None, help="config to use instead of the one saved with the checkpoint")
    parser.add_argument("--split", default="test", help="data split (data.splits.<split>); default test")
    parser.add_argument("--out", default=None, help="output dir; default <run dir>/eval/<split>")
    if kind == "video":
        parser.add_argument("--views", default="4x3",
                            help="view sets, comma-separated: TxS (clips x crops), full, Txfull, TxS+full; "
                                 "default 4x3 (plus full)")
        parser.add_argument("--no-full-view", action="store_true",
                            help="do not add the full-frame view set when --views has none")
        parser.add_argument("--images", action="store_true", help="also evaluate the split's images")
        parser.add_argument("--video-backend", choices=["decord", "pyav"], default=None,
                            help="video decoder (default: the config's data.video_backend)")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--token-budgets", type=_ints, default=None,
                       help="tokens per example, comma-separated, one evaluation each (e.g. 64,128,256,512)")
    level.add_argument("--resolutions", type=_floats, default=None,
                       help="side lengths in px, comma-separated, one evaluation each (instead of budgets)")
    parser.add_argument("--aggregate", default="mean_prob", choices=["mean_prob", "mean_logit", "max_prob"],
                        help="how the views of a video combine (default mean_prob: mean of softmax)")
    parser.add_argument("--patch-size", type=int, default=None, help="patch size (default: the config's first)")
    parser.add_argument("--class-names", default=None,
                        help="text file with one class name per line (default: the run's class tables)")
    parser.add_argument("--save-predictions", action="store_true", help="also write predictions.csv")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--max-batches", type=int, default=None, help="per pass and rank (smoke runs only)")
    parser.add_argument("--device", default=None, help="default cuda:<local rank> if CUDA is available, else cpu")
    parser.add_argument("--seed", type=int, default=None, help="loader seed (default: the config's seed or 0)")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.num_workers=0 data.batch_rows=4")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def default_out(checkpoint: str, split: str) -> str:
    """``<run dir>/eval/<split>`` for a weights file, a run dir or its ``checkpoints`` dir;
    ``<run dir>/eval/<tag>/<split>`` for one checkpoint ``<run dir>/checkpoints/<tag>``."""
    path = os.path.abspath(checkpoint)
    run_dir = os.path.dirname(path) if os.path.isfile(path) else path
    parent = os.path.dirname(run_dir)
    if os.path.basename(parent) == "checkpoints":
        return os.path.join(os.path.dirname(parent), "eval", os.path.basename(run_dir), split)
    if os.path.basename(run_dir) == "checkpoints":
        run_dir = parent
    return os.path.join(run_dir, "eval", split)


def main(argv: Sequence[str] | None = None, kind: str = "video") -> list[dict] | None:
    """Run the evaluation; returns the per-pass results on rank 0 (``None`` on other ranks)."""
    from mmvit import dist
    from mmvit.eval import plots, report
    from mmvit.eval.evaluate import evaluate_rank
    from mmvit.eval.plan import EvalSettings, plan_passes
    from mmvit.eval.runner import gather_outputs
    from mmvit.eval.summary import class_names, listed_counts, summarize
    from mmvit.eval.views import parse_view_sets
    from mmvit.loading import load

    args = build_parser(kind).parse_args(argv)
    start = time.perf_counter()
    rank, world, local_rank = dist.start_tool_group(args.local_rank)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s" if world > 1 else "%(message)s")
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    overrides = [o for group in args.overrides for o in group]
    loaded = load(args.checkpoint, args.config, overrides, device=device)
    cfg = loaded.cfg
    if kind == "video":
        view_sets = parse_view_sets(args.views, add_full=not args.no_full_view)
        kinds = ("video", "image") if args.images else ("video",)
    else:
        view_sets, kinds = parse_view_sets("full"), ("image",)
    settings = EvalSettings(split=args.split, view_sets=view_sets, token_budgets=args.token_budgets,
                            resolutions=args.resolutions, aggregate=args.aggregate, kinds=kinds,
                            video_backend=getattr(args, "video_backend", None), patch_size=args.patch_size,
                            seed=args.seed if args.seed is not None else int(cfg.get("seed") or 0),
                            max_batches=args.max_batches)
    passes = plan_passes(settings, dict(cfg["data"]))
    if rank == 0:
        log.info("evaluating %s (%s) on split %r over %d rank(s): %d passes: %s", loaded.weights, loaded.config,
                 args.split, world, len(passes), ", ".join(p.name for p in passes))
    outputs = evaluate_rank(loaded.model, cfg, settings, rank=rank, world_size=world, device=device, passes=passes,
                            tables=loaded.tables)
    per_rank = gather_outputs(outputs)
    results = None
    if rank == 0:
        listed = listed_counts(passes, dict(cfg["data"]), settings, loaded.tables)
        results = summarize(passes, per_rank, settings, loaded.tables, listed)
        names = class_names(loaded.tables, args.class_names)
        out = args.out or default_out(args.checkpoint, args.split)
        backend = settings.video_backend or (cfg.get("data") or {}).get("video_backend", "auto")
        command = " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
        info = {"checkpoint": os.path.abspath(args.checkpoint), "weights": loaded.weights, "config": loaded.config,
                "split": args.split, "world_size": world, "device": str(device), "aggregate": args.aggregate,
                "view_sets": [v.name for v in view_sets], "token_budgets": args.token_budgets,
                "resolutions": args.resolutions, "video_backend": backend, "overrides": overrides,
                "torch": torch.__version__, "command": command, "seconds": round(time.perf_counter() - start, 2)}
        paths = report.write_all(out, results, info, names, predictions=args.save_predictions)
        if not args.no_plots:
            paths += plots.plot_all(results, out, names)
        print(report.format_table(results))
        for r in results:
            for w in r.get("warnings", []):
                print(f"warning: {r['name']}: {w}")
        print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}")
    dist.end_tool_group()
    return results

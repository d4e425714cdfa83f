"""Command lines of tools/extract_features.py and tools/probe.py (docs/pretraining.md).

    python tools/extract_features.py --checkpoint CKPT [--config C] --split S --out DIR [--tokens]
    python tools/probe.py --checkpoint mae=runs/x --checkpoint random=random:runs/x [--probe attentive linear knn]
                          [--labels-fraction 0.1] [--resolutions 32,48] [--out DIR] [--append]

Both run in one process or sharded over ranks (torchrun / deepspeed launcher): every rank reads its share of
the split; extract_features writes one shard per rank and rank 0 the index; probe gathers the features on
rank 0, which trains and scores the probes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import torch

log = logging.getLogger("mmvit.eval")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _view_set(text: str) -> str:
    from mmvit.eval.views import parse_view_set

    try:
        parse_view_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="config to use instead of the one saved with the checkpoint (its data section "
                             "reads the splits)")
    parser.add_argument("--pool", choices=["mean", "model"], default="mean",
                        help="pooled features: mean of the patch tokens (default) or the model's own pool")
    parser.add_argument("--kinds", default="video,image", help="kinds of samples to read (default video,image)")
    parser.add_argument("--last-blocks", type=int, default=1, metavar="K",
                        help="features of the last K blocks, each after the final norm, side by side (K x the "
                             "width; default 1: the output)")
    parser.add_argument("--seed", type=int, default=0, help="loader seed, random encoders and probes")
    parser.add_argument("--device", default=None, help="default cuda:<local rank> if CUDA is available, else cpu")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.num_workers=0")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _start(args):
    from mmvit import dist

    rank, world, local_rank = dist.start_tool_group(args.local_rank)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s" if world > 1 else "%(message)s")
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    return rank, world, device, [o for group in args.overrides for o in group]


# -- tools/extract_features.py ---------------------------------------------------------------------------------


def extract_main(argv: Sequence[str] | None = None) -> str | None:
    """Write the features of a split; returns the index path on rank 0."""
    from mmvit import dist
    from mmvit.eval.encoders import load_encoder
    from mmvit.eval.features import Level, extract, levels_of, shard_name, write_index, write_shard

    parser = argparse.ArgumentParser(description="Pooled features (and patch tokens) of every sample of a split, "
                                                 "packed at native resolution, as safetensors shards.",
                                     epilog="See docs/pretraining.md.")
    parser.add_argument("--checkpoint", required=True, help="anything mmvit.load reads, or random:<checkpoint>")
    parser.add_argument("--split", required=True, help="data split (data.splits.<split>)")
    parser.add_argument("--out", required=True, help="output folder (shards and index.json)")
    parser.add_argument("--tokens", action="store_true", help="also store every example's patch tokens")
    parser.add_argument("--views", type=_view_set, default="full",
                        help="view set of the clips (mmvit.eval.views; default full: one full-frame clip; e.g. "
                             "4xfull), each view one example")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--resolution", type=float, default=None, help="side length in px (default: the config's)")
    level.add_argument("--token-budget", type=int, default=None, help="tokens per example instead")
    _common(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rank, world, device, overrides = _start(args)
    enc = load_encoder(args.checkpoint, args.config, overrides, seed=args.seed, device=device)
    lvl = levels_of([args.resolution] if args.resolution else None,
                    [args.token_budget] if args.token_budget else None)[0]
    fs = extract({enc.name: enc.model}, enc.cfg, args.split, level=lvl, kinds=args.kinds.split(","), pool=args.pool,
                 tokens=args.tokens, rank=rank, world_size=world, device=device, tables=enc.tables, seed=args.seed,
                 progress=True, last_blocks=args.last_blocks, views=args.views)[enc.name]
    name = shard_name(rank, world)
    info = {"checkpoint": os.path.abspath(args.checkpoint) if ":" not in args.checkpoint else args.checkpoint,
            "weights": enc.source, "split": args.split, "level": lvl.name, "pool": args.pool,
            "tokens": bool(args.tokens), "last_blocks": args.last_blocks, "views": args.views, "rank": rank,
            "world_size": world}
    write_shard(os.path.join(args.out, name), fs, info)
    counts = dist.all_gather_object((name, len(fs)))
    path = None
    if rank == 0:
        tasks = {t: list(table.names) for t, table in (enc.tables or {}).items()}
        path = write_index(args.out, counts, {**info, "rank": None, "classes": tasks,
                                              "dim": int(fs.features.shape[1]) if len(fs) else None,
                                              "seconds": round(time.perf_counter() - start, 2),
                                              "command": " ".join([os.path.basename(sys.argv[0]),
                                                                   *(argv if argv is not None else sys.argv[1:])])})
        print(f"wrote {sum(c for _, c in counts)} examples in {len(counts)} shard(s): {path}")
    dist.end_tool_group()
    return path


# -- tools/probe.py --------------------------------------------------------------------------------------------


def probe_parser() -> argparse.ArgumentParser:
    from mmvit.eval.probe_run import PROBES, ProbeSettings

    d = ProbeSettings()
    parser = argparse.ArgumentParser(
        description="Train and evaluate probes (attentive, linear, k-NN) on frozen encoders: top-1 per kind and "
                    "task at each compute level.", epilog="See docs/pretraining.md.")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]CKPT",
                        help="an encoder (anything mmvit.load reads; random:<ckpt> for a fresh copy of its "
                             "architecture); repeat to compare encoders on the same decoded batches")
    parser.add_argument("--data-config", default=None,
                        help="read the splits and class tables from this config (default: the first encoder's); "
                             "the encoders keep their own model sections")
    parser.add_argument("--compare", default=None, metavar="NAME",
                        help="add a comparison of encoder NAME's attentive probe with every other encoder's best "
                             "probe, per level, kind and task, to results.json")
    parser.add_argument("--probe", nargs="+", default=["attentive", "linear", "knn"], choices=list(PROBES),
                        help="probes to run (head: the model's own classifier, for encoders that have one)")
    parser.add_argument("--labels-fraction", type=float, default=1.0,
                        help="train the probes on a class-balanced, seeded fraction of the training split")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("--resolutions", type=_floats, default=None,
                       help="side lengths in px, one evaluation each (default: eval.resolutions of the config, "
                            "else the split's resolution)")
    level.add_argument("--token-budgets", type=_ints, default=None, help="tokens per example instead")
    parser.add_argument("--train-levels", choices=["each", "all"], default="each",
                        help="each: a probe per level, trained on that level's training features; all: one probe "
                             "per task trained on the training features of every level (the same examples at each "
                             "resolution), scored at each level")
    parser.add_argument("--train-resolutions", type=_floats, default=None,
                        help="side lengths in px of the probes' training features, pooled into one training set "
                             "per task (default: the test levels; needs --train-levels all): the same training "
                             "examples at more sizes, as a probe trained through the training augmentation sees")
    parser.add_argument("--train-views", type=_view_set, default="full",
                        help="view set of the training clips (mmvit.eval.views; default full: one full-frame "
                             "clip; e.g. 4xfull: four clips spread over each video, each a training example); "
                             "test clips stay one full-frame clip")
    parser.add_argument("--out", default=None, help="output folder (default <first checkpoint>/probe)")
    parser.add_argument("--subset-only", action="store_true",
                        help="write the class-balanced training lists to <out>/labels_subset, print the new "
                             "training sources as JSON (a --set data.splits.train.sources= value) and exit")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other encoders already in <out>/results.json")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--min-steps", type=int, default=d.min_steps,
                        help="at least this many optimizer steps per probe (more epochs on small training sets)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--heads", type=int, default=None, help="attentive probe heads (default from the width)")
    parser.add_argument("--probe-depth", type=int, default=d.depth,
                        help="attentive probe blocks: depth - 1 self-attention blocks, then the pooling one")
    parser.add_argument("--k", type=int, default=d.k)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    _common(parser)
    return parser


def config_levels(cfg: dict, resolutions, token_budgets):
    """The compute levels to probe at: the command line's, else the config's ``eval.resolutions`` /
    ``eval.token_budgets``, else the split's own resolution."""
    from mmvit.eval.features import levels_of

    if resolutions or token_budgets:
        return levels_of(resolutions, token_budgets)
    ev = cfg.get("eval") or {}
    return levels_of(ev.get("resolutions"), ev.get("token_budgets"))


def probe_main(argv: Sequence[str] | None = None) -> list[dict] | None:
    """Run the probes; returns the result rows on rank 0."""
    from mmvit import dist
    from mmvit.eval import features as feat
    from mmvit.eval.encoders import load_encoder
    from mmvit.eval.plan import split_sources
    from mmvit.eval.probe_run import (ProbeSettings, format_comparison, format_table, probe_rows, subset_examples,
                                      subset_split, write_results)

    parser = probe_parser()
    args = parser.parse_args(argv)
    if args.train_resolutions and args.train_levels != "all":
        parser.error("--train-resolutions pools the training features of several levels: use --train-levels all")
    start = time.perf_counter()
    rank, world, device, overrides = _start(args)
    first = args.checkpoint[0].partition("=")[2] if "=" in args.checkpoint[0] else args.checkpoint[0]
    first = first.removeprefix("random:")
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first), "probe")
    encoders = [load_encoder(spec, args.config, overrides, seed=args.seed, device=device) for spec in args.checkpoint]
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise SystemExit(f"encoder names must differ, got {names}: give them as NAME=CKPT")
    data = encoders[0]   # its config reads the data and holds the class tables (or --data-config's)
    if args.data_config:
        from mmvit.config import load_config
        from mmvit.eval.encoders import Encoder, run_tables

        dcfg = load_config(args.data_config, overrides).to_dict()
        data = Encoder("data", data.model, dcfg, args.data_config, run_tables(dcfg))
    tables = data.tables
    num_classes = {t: len(table) for t, table in tables.items()}
    with_head = [e.name for e in encoders if "head" in args.probe and getattr(e.model, "task_classes", None)]
    s = ProbeSettings(epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      heads=args.heads, depth=args.probe_depth, k=args.k, temperature=args.temperature, seed=args.seed)
    tokens = "attentive" in args.probe
    models = {e.name: e.model for e in encoders}
    kinds = args.kinds.split(",")
    # A fraction of a list-based training split is chosen from the lists, so the rest is never decoded.
    train_cfg = data.cfg
    subset_dir = os.path.join(out, "labels_subset")
    subset = None
    if args.labels_fraction < 1.0:
        subset = subset_split(data.cfg["data"], args.train_split, args.labels_fraction, args.seed, subset_dir) \
            if rank == 0 else None
        subset = dist.all_gather_object(subset)[0]   # rank 0's lists (every rank reads the same files)
    if subset is not None:
        train_cfg = {**data.cfg, "data": subset}
        log.info("training split %r: class-balanced %g of its lists in %s", args.train_split, args.labels_fraction,
                 subset_dir)
    if args.subset_only:
        if subset is None:
            raise SystemExit("--subset-only needs --labels-fraction < 1 and a split of image_list/video_list sources")
        if rank == 0:
            print(json.dumps(split_sources(subset, args.train_split)))
        dist.end_tool_group()
        return None

    def run_probes(name: str, train, tests: dict) -> list[dict]:
        out_rows = []
        for probe in args.probe:
            if probe == "head" and name not in with_head:
                continue
            t0 = time.perf_counter()
            out_rows += probe_rows(probe, train, tests, num_classes, s, encoder=name,
                                   labels_fraction=args.labels_fraction)
            log.info("  %s probe: %.1f s", probe, time.perf_counter() - t0)
        return out_rows

    rows: list[dict] = []
    levels = config_levels(data.cfg, args.resolutions, args.token_budgets)
    train_levels = feat.levels_of(args.train_resolutions) if args.train_resolutions else levels
    # Training features at each training level, test features at each test level; with --train-levels all
    # they are kept until every level is read.
    pooled_train: dict[str, list] = {e.name: [] for e in encoders}
    pooled_test: dict[str, dict] = {e.name: {} for e in encoders}
    for lvl in dict.fromkeys([*levels, *train_levels]):
        got: dict[str, dict] = {}
        for role, split, cfg in (("train", args.train_split, train_cfg), ("test", args.test_split, data.cfg)):
            if lvl not in (train_levels if role == "train" else levels):
                continue
            part = feat.extract(models, cfg, split, level=lvl, kinds=kinds, pool=args.pool, tokens=tokens,
                                logits=with_head, rank=rank, world_size=world, device=device, tables=tables,
                                seed=args.seed, progress=True, last_blocks=args.last_blocks,
                                views=args.train_views if role == "train" else "full")
            got[role] = {name: feat.gather(fs) for name, fs in part.items()}
        if rank != 0:
            continue
        for e in encoders:
            train, test = got.get("train", {}).get(e.name), got.get("test", {}).get(e.name)
            if train is not None:
                if subset is None:   # not chosen from the lists: subset the features
                    train = subset_examples(train, args.labels_fraction, args.seed)
                log.info("%s at %s: %d training features (fraction %g, views %s)", e.name, lvl.name, len(train),
                         args.labels_fraction, args.train_views)
            if test is not None:
                log.info("%s at %s: %d test examples", e.name, lvl.name, len(test))
            if args.train_levels == "all":
                if train is not None:
                    pooled_train[e.name].append(train)
                if test is not None:
                    pooled_test[e.name][lvl.name] = test
            else:
                rows += run_probes(e.name, train, {lvl.name: test})
    if rank == 0 and args.train_levels == "all":
        for e in encoders:
            train = feat.FeatureSet.concat(pooled_train[e.name])
            log.info("%s: probes trained on %d training features of %d levels", e.name, len(train),
                     len(train_levels))
            rows += run_probes(e.name, train, pooled_test[e.name])
    result = None
    if rank == 0:
        info = {"encoders": {e.name: e.source for e in encoders}, "probes": args.probe,
                "labels_fraction": args.labels_fraction, "train_levels": args.train_levels,
                "train_resolutions": args.train_resolutions, "train_views": args.train_views,
                "last_blocks": args.last_blocks, "seed": args.seed,
                "pool": args.pool,
                "settings": dataclasses.asdict(s), "world_size": world,
                "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 2),
                "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])}
        paths = write_results(out, rows, info, append=args.append, compare_with=args.compare)
        print(format_table(rows), end="")
        if args.compare:
            with open(paths[0]) as f:
                comparison = json.load(f)["comparison"]
            print(format_comparison(comparison), end="")
        print(f"wrote {', '.join(os.path.relpath(p) for p in paths)}")
        result = rows
    dist.end_tool_group()
    return result

"""Speed of mmvit against padding, against vit-pytorch's NaViT and against the machine (docs/benchmarks.md).

    python tools/benchmark.py all --out bench.json          # everything, about 4 min on 2 CPU cores
    python tools/benchmark.py {pack,attention,step,loader,decode,gpu} [--tiny] [--threads N] [--repeats N]
    python tools/benchmark.py step --precision fp32,bf16 [--widths 192,384,768]   # bf16 against fp32
    python tools/benchmark.py pretrain [--tiny]    # MAE at mask ratios 0 / 0.75 / 0.9 and JEPA vs supervised
    python tools/benchmark.py pretrain --encoder 256x6 --decoder 128x2   # encoder / decoder (width x depth)

Each subcommand runs its variants in one process on the same inputs, after warm-up, in interleaved rounds,
and reports medians and ratios as markdown tables on stdout (and, with --out, as JSON with the machine).
``--tiny`` runs every benchmark on toy sizes in seconds (the test suite uses it); its bars are not judged.
Peers are installed only for benchmarking: ``pip install --no-deps vit-pytorch==1.26.11``; without them
their rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvit.bench.common import Report, busy_warning, machine_info

NAMES = ("pack", "attention", "step", "loader", "decode", "gpu")


def _width_depth(text: str) -> tuple[int, int]:
    """``"256x6"`` -> ``(256, 6)``."""
    try:
        width, depth = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"expected WIDTHxDEPTH such as 256x6, got {text!r}") from None
    return width, depth


def run_one(name: str, args: argparse.Namespace) -> Report:
    kw = {"tiny": args.tiny, "seed": args.seed}
    if args.repeats is not None:
        kw["repeats"] = args.repeats
    if name == "pack":
        from mmvit.bench import pack
        return pack.run(**kw)
    if name == "attention":
        from mmvit.bench import attention
        return attention.run(**kw)
    if name == "step" and args.precision:
        from mmvit.bench import precision
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
        return precision.run(**kw, precisions=args.precision.split(","), widths=widths)
    if name == "step":
        from mmvit.bench import step
        return step.run(**kw, peers_enabled=not args.no_peers)
    if name == "pretrain":
        from mmvit.bench import pretrain
        sizes = {k: _width_depth(getattr(args, k)) for k in ("encoder", "decoder") if getattr(args, k, None)}
        return pretrain.run(**kw, **sizes)
    if name == "loader":
        from mmvit.bench import io
        return io.run_loader(**kw, data_dir=args.data)
    if name == "decode":
        from mmvit.bench import io
        return io.run_decode(**kw, data_dir=args.data)
    from mmvit.bench import gpu
    return gpu.run(**kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=(*NAMES, "pretrain", "all"), help="benchmark to run; 'all' runs each in turn")
    parser.add_argument("--out", help="write the results (and the machine) to this JSON file")
    parser.add_argument("--md", help="also write the tables as markdown to this file (for docs/benchmarks.md)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a smoke test in seconds")
    parser.add_argument("--repeats", type=int, help="timed rounds per variant (default: each benchmark's own)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="demo dataset for loader/decode (default: build one in a temp dir)")
    parser.add_argument("--precision", help="step: compare these precisions (fp32,bf16[,autocast]) at --widths "
                                            "instead of mmvit against padding and peers; 'all' runs both")
    parser.add_argument("--widths", help="step --precision: model widths (default 192,384,768: ViT-Ti/S/B)")
    parser.add_argument("--no-peers", action="store_true", help="leave vit-pytorch out of the step benchmark")
    parser.add_argument("--encoder", help="pretrain: encoder WIDTHxDEPTH (default 256x6; --tiny keeps its own)")
    parser.add_argument("--decoder", help="pretrain: MAE decoder / JEPA predictor WIDTHxDEPTH (default 128x2; "
                                          "--tiny keeps its own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine_info()
    command = "python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"machine: {info['cpu']} ({info['cpu_flags']}), {info['usable_cores']} cores, torch {info['torch']}, "
              f"{info['threads']} threads, cuda: {info['cuda'] or 'none'}, "
              f"load average {info.get('load_average_1min', '?')} at start")
    print(header)
    sections = [f"`{command}`", "", header]
    if busy_warning(info):
        print(f"warning: {busy_warning(info)}")
        sections += ["", f"warning: {busy_warning(info)}"]
    results = {"command": command, "machine": info, "tiny": args.tiny, "reports": []}
    t0 = time.perf_counter()
    jobs = [(args.what, args)]
    if args.what == "all":  # every benchmark, and the precision comparison after the step against peers
        plain = argparse.Namespace(**{**vars(args), "precision": None})
        jobs = [(n, plain) for n in NAMES]
        jobs.insert(NAMES.index("step") + 1,
                    ("step", argparse.Namespace(**{**vars(args), "precision": args.precision or "fp32,bf16"})))
    for name, job_args in jobs:
        report = run_one(name, job_args)
        if args.tiny:
            for bar in report.bars:
                bar.judged = False
        print()
        print(report.markdown(), flush=True)
        sections += ["", report.markdown()]
        results["reports"].append(report.to_json())
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"]["load_average_1min_end"] = machine_info().get("load_average_1min")
    footer = f"total {results['seconds']:.0f} s, load average {results['machine']['load_average_1min_end']} at the end"
    print("\n" + footer)
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join([*sections, "", footer, ""]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw a training run's curves to PNG files: ``python tools/plot_run.py RUN_DIR [--out DIR]``.

Reads ``RUN_DIR/metrics.jsonl`` (and ``schedule.json``) written by tools/train.py and writes, into
``RUN_DIR/plots`` by default:
  loss.png        training loss per step (skipped steps marked) and evaluation loss
  accuracy.png    evaluation top-1/top-5 (and the EMA's), training top-1
  throughput.png  examples/s, tokens/s and the padding fraction
  curriculum.png  the curriculum: stages over the steps, planned vs measured examples per step, and the rate
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def read_records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} does not exist: is {run_dir} a run folder of tools/train.py?")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and _finite(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss(plt, records, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_series(records, "train", "loss"), lw=1, label="train")
    xs, ys = _series(records, "eval", "loss")
    if xs:
        ax.plot(xs, ys, "o-", label="eval")
    skipped = [r["step"] for r in records if r.get("kind") == "train" and r.get("skipped")]
    for s in skipped:
        ax.axvline(s, color="red", alpha=0.3, lw=1)
    if skipped:
        ax.plot([], [], color="red", alpha=0.3, label=f"skipped steps ({len(skipped)})")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(plt, records, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("top1", "o-"), ("top5", "s-"), ("ema_top1", "o--"), ("ema_top5", "s--")):
        xs, ys = _series(records, "eval", key)
        if xs:
            ax.plot(xs, ys, style, label=f"eval {key}")
    xs, ys = _series(records, "train", "train_top1")
    if xs:
        ax.plot(xs, ys, lw=1, alpha=0.6, label="train top1")
    ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(plt, records, path):
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key, label in zip(axes, ("examples_per_s", "tokens_per_s", "padding"),
                              ("examples/s", "tokens/s", "padding fraction")):
        ax.plot(*_series(records, "train", key), lw=1)
        ax.set_ylabel(label)
    axes[0].set_title("throughput (all ranks)")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curriculum(plt, records, schedule, path):
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax = axes[0]
    names: list[str] = []
    for seg in schedule:
        if seg["name"] not in names:
            names.append(seg["name"])
    for seg in schedule:
        ax.barh(names.index(seg["name"]), seg["end"] - seg["start"], left=seg["start"], height=0.6)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("curriculum stages")
    ax = axes[1]
    if schedule:
        xs = [s for seg in schedule for s in (seg["start"], seg["end"])]
        ys = [1.0 / seg["cost"] for seg in schedule for _ in (0, 1)]
        ax.plot(xs, ys, lw=1.5, label="planned (x full-shape examples/step)")
    sx, sy = _series(records, "train", "examples")
    if sx:
        full = [y for x, y, c in zip(sx, sy, [r.get("cost") for r in records if r.get("kind") == "train"
                                              and _finite(r.get("examples"))]) if c == 1.0]
        ref = sum(full) / len(full) if full else max(sy)
        ax.plot(sx, [y / ref for y in sy], ".", ms=3, label="measured / mean at full shape")
    ax.set_ylabel("examples per step (rel.)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(*_series(records, "train", "lr"), lw=1)
    ax.set(ylabel="learning rate", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(args.run_dir)
    schedule = []
    sched_path = os.path.join(args.run_dir, "schedule.json")
    if os.path.isfile(sched_path):
        with open(sched_path) as f:
            schedule = json.load(f)
    out = args.out or os.path.join(args.run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, f"{name}.png") for name in ("loss", "accuracy", "throughput", "curriculum")}
    plot_loss(plt, records, paths["loss"])
    plot_accuracy(plt, records, paths["accuracy"])
    plot_throughput(plt, records, paths["throughput"])
    plot_curriculum(plt, records, schedule, paths["curriculum"])
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

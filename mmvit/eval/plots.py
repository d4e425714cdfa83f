"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed).

- accuracy against compute level: one line per (kind, view set), x = token budget or resolution;
  NaViT's flexible inference is one model evaluated at many compute levels.
- confusion matrix heatmap, rows = true class, columns = predicted class, class names when known.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(results: Sequence[dict], path: str, metric: str = "top1") -> str | None:
    """Accuracy (in %) against token budget or resolution; ``None`` (nothing written) without such passes."""
    levels = [r for r in results if r["setting"] in ("token_budget", "resolution")]
    if not levels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in levels:
        groups.setdefault((r["kind"], r["views"]), []).append(r)
    markers = "osD^vP*X"
    for i, ((kind, views), rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["value"])
        ys = [100 * r[metric] for r in rs]
        n = rs[0]["views_per_video"]
        # Distinct markers and decreasing sizes keep lines that coincide visible.
        ax.plot([r["value"] for r in rs], ys, marker=markers[i % len(markers)], markersize=max(3, 8 - i),
                label=f"{kind}, {views} ({n} view{'s' if n != 1 else ''})")
    settings = {r["setting"] for r in levels}
    ax.set_xscale("log", base=2)
    values = sorted({r["value"] for r in levels})
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel("tokens per example" if settings == {"token_budget"} else "side length (px)")
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.set_title(f"{metric} accuracy vs compute level")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(confusion: Sequence[Sequence[int]], path: str, *, classes: Sequence[int] | None = None,
                   class_names: Sequence[str] | None = None, title: str = "") -> str:
    """Heatmap of a ``[K, K]`` confusion matrix (counts), rows normalized to 1 for the colours.

    ``classes``: the rows to show (the true classes present); columns are those plus any class predicted
    for them. Counts are written in the cells when the matrix is small enough to read.
    """
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.int64)
    rows = list(classes) if classes is not None else [i for i in range(len(cm)) if cm[i].sum() > 0]
    cols = sorted(set(rows) | {int(c) for c in np.flatnonzero(cm[rows].sum(0))})
    sub = cm[np.ix_(rows, cols)]
    norm = sub / np.maximum(sub.sum(1, keepdims=True), 1)

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    width, height = max(4.0, 0.45 * len(cols) + 3.0), max(3.5, 0.45 * len(rows) + 2.0)
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([name(c) for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name(c) for c in rows], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(rows) * len(cols) <= 900:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if sub[i, j]:
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def plot_all(results: Sequence[dict], out_dir: str, class_names: dict[str, Sequence[str]] | None = None
             ) -> list[str]:
    """accuracy.png, and confusion_<kind>_<views>.png (``confusion_<task>_<kind>_<views>.png`` with several
    tasks) for each (task, kind, view set) at its highest compute level; ``class_names`` per task."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    acc = plot_accuracy(results, os.path.join(out_dir, "accuracy.png"))
    if acc:
        paths.append(acc)
    best: dict[tuple[str, str, str], dict] = {}
    for r in results:
        key = (r.get("task", "default"), r["kind"], r["views"])
        value = r["value"] if r["value"] is not None else math.inf
        if key not in best or value >= (best[key]["value"] if best[key]["value"] is not None else math.inf):
            best[key] = r
    several = len({k[0] for k in best}) > 1
    for (task, kind, views), r in best.items():
        prefix = f"{task}: " if several else ""
        title = f"{prefix}{kind}, views {views}, {r['level']}: top-1 {100 * r['top1']:.1f}% ({r['samples']} {kind}s)"
        name = f"confusion_{slug(task) + '_' if several else ''}{kind}_{slug(views)}.png"
        paths.append(plot_confusion(r["confusion"], os.path.join(out_dir, name), classes=r["classes"],
                                    class_names=(class_names or {}).get(task), title=title))
    return paths

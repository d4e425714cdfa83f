"""Evaluation results as a printed table, ``results.json``, ``results.csv`` and per-video predictions.

Input: the per-pass dicts of :func:`mmvit.eval.evaluate.summarize`. Keys starting with ``_`` (aggregated
scores and ids) are internal and never written to results.json.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

CSV_COLUMNS = ("task", "kind", "views", "views_per_video", "setting", "value", "samples", "evaluated_views", "top1", "top5",
               "mean_class_acc", "single_view_top1", "tokens_per_clip", "model_clips_per_s", "model_tokens_per_s",
               "e2e_clips_per_s", "e2e_tokens_per_s", "padding_fraction", "forward_s", "wall_s", "ranks")


def public(result: dict) -> dict:
    """A result without its internal (``_``) keys."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def csv_row(result: dict) -> dict[str, Any]:
    tp = result["throughput"]
    row = {k: result.get(k, tp.get(k)) for k in CSV_COLUMNS}
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}" if isinstance(x, float) and math.isfinite(x) else "   nan"


def _num(x: float, digits: int = 1) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "nan"
    return f"{x:,.{digits}f}"


def format_table(results: Sequence[dict]) -> str:
    """One line per pass: accuracies in %, throughput of the model alone and end to end."""
    header = ("task", "kind", "views", "level", "count", "top1", "top5", "mean_cls", "tok/clip", "clips/s", "tok/s",
              "e2e clips/s", "e2e tok/s")
    rows = []
    for r in results:
        tp = r["throughput"]
        rows.append((r.get("task", "default"), r["kind"], r["views"], r["level"], str(r["samples"]), _pct(r["top1"]),
                     _pct(r["top5"]), _pct(r["mean_class_acc"]), _num(tp["tokens_per_clip"]),
                     _num(tp["model_clips_per_s"]), _num(tp["model_tokens_per_s"], 0), _num(tp["e2e_clips_per_s"]),
                     _num(tp["e2e_tokens_per_s"], 0)))
    if all(row[0] == "default" for row in rows):  # one label space: no task column
        header, rows = header[1:], [row[1:] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1, 2} if header[0] == "kind" else {0, 1, 2, 3}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def write_json(path: str, results: Sequence[dict], info: dict, class_names: dict | None = None) -> None:
    """``{"info": ..., "class_names": {task: [...]}, "results": [...]}`` (every result names its task);
    confusion matrices as nested lists."""
    payload = {"info": info, "class_names": {t: list(n) for t, n in class_names.items()} if class_names else None,
               "results": [public(r) for r in results]}
    text = json.dumps(payload, indent=1, default=_jsonable)
    # Lists of plain numbers (confusion rows) on one line each: indented, an 18x18 matrix takes 360 lines.
    text = re.sub(r"\[[-\d\s,.eE+]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"),
                  text)
    with open(path, "w") as f:
        f.write(text + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_csv(path: str, results: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow(csv_row(r))


def write_predictions(path: str, results: Sequence[dict], class_names: dict | None = None, top: int = 5) -> None:
    """One CSV line per (pass, video): id, label, prediction and the ``top`` classes with their scores."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pass", "task", "video_id", "label", "pred", "correct", "top_classes", "top_scores"])
        for r in results:
            task = r.get("task", "default")
            names_of = (class_names or {}).get(task)
            scores, labels = r["_scores"], r["_labels"]
            k = min(top, scores.shape[1])
            values, index = scores.topk(k, dim=1)
            for i, vid in enumerate(r["_ids"]):
                names = [names_of[c] if names_of else str(c) for c in index[i].tolist()]
                writer.writerow([r["name"], task, vid, int(labels[i]), names[0], int(index[i, 0] == labels[i]),
                                 " ".join(names), " ".join(f"{v:.4f}" for v in values[i].tolist())])


def write_all(out_dir: str, results: Sequence[dict], info: dict, class_names: dict | None = None,
              predictions: bool = False) -> list[str]:
    """results.json, results.csv (and predictions.csv) under ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")]
    write_json(paths[0], results, info, class_names)
    write_csv(paths[1], results)
    if predictions:
        paths.append(os.path.join(out_dir, "predictions.csv"))
        write_predictions(paths[-1], results, class_names)
    return paths

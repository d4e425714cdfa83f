"""Prediction: the top classes of every image and video file, with a trained model (tools/predict.py).

Files go through the evaluation pipeline of the model's own config (its data section: normalisation, patch
size, frames, resolution or a given token budget, the views), packed many per batch at native resolution;
the scores of a video's views are averaged (mean of probabilities). A file that cannot be read is reported
with its reason, never a crash. Runs in one process or sharded over ranks (torchrun / deepspeed).

    m = mmvit.load("runs/demo")
    for p in m.predict(["clip.mp4", "digit.png"]):
        print(p["path"], p["top"][0])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from mmvit.eval.views import parse_view_set


@dataclasses.dataclass
class PredictSettings:
    topk: int = 5
    task: str | None = None             # the head to use; None: every task of the model
    views: str = "full"                 # a view set for videos (tools/eval_video.py's --views spelling)
    token_budget: int | None = None     # tokens per example instead of the config's resolution
    resolution: float | None = None     # side length in px instead of the config's resolution
    batch_rows: int | None = None
    num_workers: int | None = None


def data_config(cfg: dict, files: Sequence[str], settings: PredictSettings, task: str | None = None
                ) -> tuple[dict, dict | None]:
    """The data section that reads ``files`` with the model's preprocessing, and the stage (compute level).
    ``task``: the task the (unlabelled) files are read under (it only matters for the loader's bookkeeping)."""
    data = copy.deepcopy(dict(cfg.get("data") or {}))
    views = parse_view_set(settings.views).source_views()
    source = {"type": "files", "paths": list(files), "views": views}
    if task is not None:
        source["task"] = task
    data["splits"] = {"predict": {"sources": [source], "persistent_workers": False}}
    data.pop("sources", None)
    if settings.batch_rows is not None:
        data["batch_rows"] = settings.batch_rows
    if settings.num_workers is not None:
        data["num_workers"] = settings.num_workers
    stage = None
    if settings.token_budget is not None:
        stage = {"token_budget": int(settings.token_budget)}
        data["seq_len"] = max(int(data.get("seq_len", 256)), int(settings.token_budget))
    elif settings.resolution is not None:
        stage = {"resolution": {"type": "fixed", "values": [float(settings.resolution)]}}
    return data, stage


@torch.inference_mode()
def predict(model: torch.nn.Module, cfg: dict, tables, files: Sequence[str], settings: PredictSettings | None = None,
            *, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``{"predictions": [...], "failures": [...]}`` for this rank's share of ``files``.

    A prediction: ``{"path", "kind", "views", "task", "top": [(class name, probability), ...]}`` (one per
    file and task); a failure: ``{"path", "cause", "detail"}``.
    """
    from mmvit.data import build_loader

    settings = settings or PredictSettings()
    device = torch.device(device)
    tasks = list(getattr(model, "task_classes", {}) or {})
    if not tasks:
        raise ValueError("the model has no classification head to predict with")
    wanted = tasks if settings.task is None else [settings.task]
    if settings.task is not None and settings.task not in tasks:
        raise KeyError(f"--task {settings.task!r}: the model's tasks are {tasks}")
    names = {t: list(tables[t].names) if tables is not None and t in tables else None for t in tasks}
    data, stage = data_config(cfg, files, settings, wanted[0] if tables is not None and len(tables) > 1 else None)
    loader, control = build_loader(data, split="predict", rank=rank, world_size=world_size, seed=0, stage=stage,
                                   train=False, tables=tables)
    model.eval()
    scores: dict[tuple[str, str], torch.Tensor] = {}
    views: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for batch in loader:
        batch = batch.to(device)
        feats = model.forward_features(batch)
        for t in wanted:
            ti = tasks.index(t)
            logits = model.forward_head(feats, torch.full((len(feats),), ti, dtype=torch.long, device=device))
            probs = logits[:, :model.task_classes[t]].float().softmax(-1).cpu()
            for m, p in zip(batch.meta, probs):
                key = (m["path"], t)
                scores[key] = scores.get(key, 0) + p
                if t == wanted[0]:
                    views[m["path"]] = views.get(m["path"], 0) + 1
                    kinds[m["path"]] = m["kind"]
    predictions = []
    for (path, t), total in scores.items():
        mean = total / views[path]
        k = min(settings.topk, len(mean))
        values, index = mean.topk(k)
        label = [names[t][i] if names[t] else str(i) for i in index.tolist()]
        predictions.append({"path": path, "kind": kinds[path], "views": views[path], "task": t,
                            "top": [(n, float(v)) for n, v in zip(label, values.tolist())]})
    failures = [{"path": p, "cause": c, "detail": d} for p, c, d in control.stats().get("failures", [])]
    return {"predictions": predictions, "failures": failures}

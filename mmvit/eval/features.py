"""Frozen-encoder features of every sample of a split: pooled features, optionally patch tokens.

Samples are read by the evaluation loader (``mmvit.eval.plan``: one deterministic pass per kind at a compute
level, videos as one full-frame clip) and packed at native resolution; each rank reads its share of the split
(the loader gives every sample to exactly one rank). Several encoders can run on the same decoded batches
(:func:`extract`), so comparing encoders costs one decode of the split.

On disk (tools/extract_features.py): one safetensors file per rank, ``features-<rank>-of-<world>.safetensors``,
holding ``features [N, D]`` (fp32), ``labels [N]``, ``views [N]``, ``kinds [N]`` (0 image, 1 video), ``tasks [N]``
(index into the metadata's task list) and, with tokens, ``tokens [sum n_i, D]``, ``token_offsets [N + 1]`` and
``grids [N, 3]``; the string ids and task names live in the safetensors metadata (JSON). Rank 0 writes
``index.json`` naming every shard and its count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from mmvit.eval.plan import EvalPass, EvalSettings, pass_data_config, plan_passes
from mmvit.eval.runner import example_key
from mmvit.eval.views import parse_view_set
from mmvit.packing import PackedBatch
from mmvit.pretrain.probes import _flat_tokens, mean_features

log = logging.getLogger("mmvit.eval")

Pool = Literal["mean", "model"]
KINDS = ("image", "video")
INDEX_NAME = "index.json"


@dataclasses.dataclass
class FeatureSet:
    """Features of ``N`` examples (views) of one encoder at one compute level.

    Attributes:
        ids, views, kinds, tasks: per example: source id (``example_key``), view index, ``image``/``video``,
            task name.
        labels: ``[N]`` class index within the example's task.
        features: ``[N, D]`` fp32 pooled features.
        tokens: per example ``[n_i, D]`` fp32 final-norm patch tokens, or ``None``.
        grids: ``[N, 3]`` patch grid of each example.
        logits: ``[N, K]`` the model's own head (``-inf`` beyond a task's classes), or ``None``.
    """

    ids: list[str]
    views: list[int]
    kinds: list[str]
    tasks: list[str]
    labels: torch.Tensor
    features: torch.Tensor
    grids: torch.Tensor
    tokens: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows: Sequence[int] | torch.Tensor) -> FeatureSet:
        index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        r = index.tolist()
        return FeatureSet([self.ids[i] for i in r], [self.views[i] for i in r], [self.kinds[i] for i in r],
                          [self.tasks[i] for i in r], self.labels[index], self.features[index], self.grids[index],
                          None if self.tokens is None else [self.tokens[i] for i in r],
                          None if self.logits is None else self.logits[index])

    def rows(self, kind: str | None = None, task: str | None = None) -> list[int]:
        return [i for i in range(len(self)) if (kind is None or self.kinds[i] == kind)
                and (task is None or self.tasks[i] == task)]

    @staticmethod
    def concat(parts: Sequence[FeatureSet]) -> FeatureSet:
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if not parts:
            raise ValueError("no feature sets to concatenate")
        has_tokens = all(p.tokens is not None for p in parts)
        has_logits = all(p.logits is not None for p in parts)
        return FeatureSet([i for p in parts for i in p.ids], [v for p in parts for v in p.views],
                          [k for p in parts for k in p.kinds], [t for p in parts for t in p.tasks],
                          torch.cat([p.labels for p in parts]), torch.cat([p.features for p in parts]),
                          torch.cat([p.grids for p in parts]),
                          [t for p in parts for t in p.tokens] if has_tokens else None,  # type: ignore[union-attr]
                          torch.cat([p.logits for p in parts]) if has_logits else None)

    def sorted(self) -> FeatureSet:
        """Examples ordered by (id, view): the same order whatever the ranks and batches were."""
        order = sorted(range(len(self)), key=lambda i: (self.ids[i], self.views[i]))
        return self.select(order)


@dataclasses.dataclass(frozen=True)
class Level:
    """A compute level: ``config`` (the split's resolution), ``resolution`` (px side) or ``token_budget``."""

    setting: Literal["config", "resolution", "token_budget"] = "config"
    value: float | None = None

    @property
    def name(self) -> str:
        return EvalPass("image", None, self.setting, self.value).level


def levels_of(resolutions: Sequence[float] | None = None, token_budgets: Sequence[int] | None = None) -> list[Level]:
    if resolutions and token_budgets:
        raise ValueError("give resolutions or token budgets, not both")
    if token_budgets:
        return [Level("token_budget", float(b)) for b in token_budgets]
    if resolutions:
        return [Level("resolution", float(r)) for r in resolutions]
    return [Level()]


def settings_for(split: str, level: Level, kinds: Sequence[str] = ("video", "image"), seed: int = 0,
                 data_overrides: Mapping | None = None, views: str = "full") -> EvalSettings:
    """Evaluation settings of one feature pass per kind: videos under one view set (``views``, default one
    full-frame clip; e.g. ``4xfull`` for four clips spread over each video, each its own example)."""
    return EvalSettings(split=split, view_sets=[parse_view_set(views)], kinds=tuple(kinds), seed=seed,
                        resolutions=[level.value] if level.setting == "resolution" else None,
                        token_budgets=[int(level.value)] if level.setting == "token_budget" else None,
                        data_overrides=dict(data_overrides or {}))


def _encode(model: torch.nn.Module, batch: PackedBatch, pool: Pool, tokens: bool, logits: bool,
            last_blocks: int = 1) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor | None]:
    """``([E, D] pooled, per-example tokens or None, [E, K] logits or None)`` of one batch (``D``: the
    width times ``last_blocks``)."""
    need_tokens = tokens or pool == "mean"
    tok = None
    if need_tokens:
        tok = model.forward_tokens(batch, last_blocks) if last_blocks > 1 else model.forward_tokens(batch)
    feats = model.forward_features(batch) if (pool == "model" or logits) else None
    pooled = mean_features(tok, batch) if pool == "mean" else feats
    per_example = None
    if tokens:
        x, example = _flat_tokens(tok, batch)
        order = torch.argsort(example, stable=True)   # tokens of an example keep their packed order
        counts = torch.bincount(example, minlength=batch.num_examples).tolist()
        per_example = [t.float().cpu() for t in x[order].split(counts)]
    out_logits = None
    if logits:
        if not getattr(model, "task_classes", None):
            raise ValueError("the model has no classification head: its own logits cannot be evaluated")
        out_logits = model.forward_head(feats, batch.tasks).float().cpu()
    return pooled.float().cpu(), per_example, out_logits


@torch.inference_mode()
def extract(models: Mapping[str, torch.nn.Module], cfg: Mapping, split: str, *, level: Level = Level(),
            kinds: Sequence[str] = ("video", "image"), pool: Pool = "mean", tokens: bool = False,
            logits: Sequence[str] = (), rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
            tables=None, seed: int = 0, data_overrides: Mapping | None = None, progress: bool = False,
            loader_fn: Callable | None = None, last_blocks: int = 1, views: str = "full") -> dict[str, FeatureSet]:
    """This rank's features of ``split`` for every encoder in ``models`` (same batches for all).

    Args:
        models: name -> encoder with ``forward_tokens`` (and ``forward_features`` for ``pool="model"``).
        cfg: the config whose ``data`` section reads the split.
        level: the compute level of every pass.
        pool: ``mean`` (mean of the final-norm patch tokens, as MAE probes) or ``model`` (the model's own pool;
            an untrained MAP pool of a pretrained encoder is a random projection).
        tokens: also keep every example's patch tokens.
        logits: names of the models whose own head is evaluated too (a supervised baseline).
        tables: class tables the labels are encoded with.
        last_blocks: tokens (and their mean) of the last ``k`` blocks, each after the final norm, side by side
            (``k x`` the width); not with ``pool="model"``, whose pool reads the last block.
        views: the view set of videos (``mmvit.eval.views``): every view is its own example (``views`` index).
    """
    if last_blocks > 1 and pool == "model":
        raise ValueError("last_blocks > 1 reads the tokens of several blocks: use pool='mean' (the model's own "
                         "pool reads its last block only)")
    from tqdm import tqdm

    if loader_fn is None:
        from mmvit.data import build_loader as loader_fn
    device = torch.device(device)
    for m in models.values():
        m.eval()
    data_cfg = dict(cfg["data"])
    settings = settings_for(split, level, kinds, seed, data_overrides, views)
    passes = plan_passes(settings, data_cfg)
    parts: dict[str, list[FeatureSet]] = {name: [] for name in models}
    bar = tqdm(desc=f"{split} {level.name}", unit="ex", disable=not progress or rank != 0, dynamic_ncols=True)
    for p in passes:
        loader, control = loader_fn(pass_data_config(data_cfg, p, settings), split=split, rank=rank,
                                    world_size=world_size, seed=seed, stage=p.stage(), train=False, tables=tables)
        try:
            for batch in loader:
                if batch.labels is None or batch.meta is None:
                    raise ValueError("feature extraction needs batches with labels and meta (id, view, kind)")
                keys = [example_key(m) for m in batch.meta]
                keep = [i for i, k in enumerate(keys) if k[2] == p.kind]
                if not keep:
                    continue
                batch = batch.to(device)
                index = torch.tensor(keep, dtype=torch.long)
                meta = [batch.meta[i] for i in keep]
                for name, model in models.items():
                    pooled, tok, lg = _encode(model, batch, pool, tokens, name in logits, last_blocks)
                    parts[name].append(FeatureSet(
                        [keys[i][0] for i in keep], [keys[i][1] for i in keep], [keys[i][2] for i in keep],
                        [str(m.get("task", "default")) for m in meta], batch.labels.cpu().long()[index],
                        pooled[index], batch.grid.cpu().long()[index],
                        None if tok is None else [tok[i] for i in keep], None if lg is None else lg[index]))
                bar.update(len(keep))
        finally:
            for obj in (control, loader):
                close = getattr(obj, "close", None)
                if callable(close):
                    close()
        stats = getattr(control, "stats", None)
        bad = (stats() or {}).get("bad") if callable(stats) else None
        if bad:
            log.warning("rank %d, %s: bad samples skipped: %s", rank, p.name, dict(bad))
    bar.close()
    out = {}
    for name, fs in parts.items():
        if not fs:  # this rank got no sample (a split smaller than the world)
            out[name] = FeatureSet([], [], [], [], torch.zeros(0, dtype=torch.long), torch.zeros(0, 0),
                                   torch.zeros(0, 3, dtype=torch.long), [] if tokens else None)
        else:
            out[name] = FeatureSet.concat(fs)
    return out


def gather(fs: FeatureSet) -> FeatureSet:
    """Every rank's features on every rank, sorted by (id, view); a view seen twice raises."""
    from mmvit import dist

    merged = FeatureSet.concat(dist.all_gather_object(fs)).sorted()
    keys = list(zip(merged.ids, merged.views))
    if len(set(keys)) != len(keys):
        raise RuntimeError("an example was read by more than one rank")
    return merged


# -- safetensors shards ---------------------------------------------------------------------------------------


def shard_name(rank: int, world_size: int) -> str:
    return f"features-{rank:05d}-of-{world_size:05d}.safetensors"


def write_shard(path: str, fs: FeatureSet, info: Mapping | None = None) -> None:
    """One rank's features as a safetensors file (see the module docstring for its tensors)."""
    from safetensors.torch import save_file

    task_names = sorted(set(fs.tasks))
    tensors = {
        "features": fs.features.float().contiguous(),
        "labels": fs.labels.long().contiguous(),
        "views": torch.tensor(fs.views, dtype=torch.long),
        "kinds": torch.tensor([KINDS.index(k) for k in fs.kinds], dtype=torch.long),
        "tasks": torch.tensor([task_names.index(t) for t in fs.tasks], dtype=torch.long),
        "grids": fs.grids.long().contiguous(),
    }
    if fs.tokens is not None:
        lengths = torch.tensor([len(t) for t in fs.tokens], dtype=torch.long)
        tensors["token_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        tensors["tokens"] = (torch.cat(fs.tokens).float().contiguous() if fs.tokens
                             else torch.zeros(0, fs.features.shape[1]))
    if fs.logits is not None:
        tensors["logits"] = fs.logits.float().contiguous()
    metadata = {"ids": json.dumps(fs.ids), "task_names": json.dumps(task_names),
                "info": json.dumps(dict(info or {}))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=metadata)


def read_shard(path: str) -> FeatureSet:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    task_names = json.loads(meta["task_names"])
    tokens = None
    if "tokens" in t:
        off = t["token_offsets"].tolist()
        tokens = [t["tokens"][a:b] for a, b in zip(off[:-1], off[1:])]
    return FeatureSet(json.loads(meta["ids"]), t["views"].tolist(), [KINDS[k] for k in t["kinds"].tolist()],
                      [task_names[i] for i in t["tasks"].tolist()], t["labels"], t["features"], t["grids"], tokens,
                      t.get("logits"))


def write_index(out_dir: str, shards: Sequence[tuple[str, int]], info: Mapping) -> str:
    path = os.path.join(out_dir, INDEX_NAME)
    with open(path, "w") as f:
        json.dump({**dict(info), "shards": [{"file": n, "examples": c} for n, c in shards],
                   "examples": sum(c for _, c in shards)}, f, indent=2)
    return path


def read_features(out_dir: str) -> FeatureSet:
    """Every shard of an extraction folder (``index.json``), sorted by (id, view)."""
    with open(os.path.join(out_dir, INDEX_NAME)) as f:
        index = json.load(f)
    return FeatureSet.concat([read_shard(os.path.join(out_dir, s["file"])) for s in index["shards"]]).sorted()

"""Probes on frozen features: training subsets, probe training, top-1 per kind and task (tools/probe.py).

The encoder is never trained here: features come once from :mod:`mmvit.eval.features` (tokens kept in memory
for the attentive probe), then each probe trains on the training split's features (all of them, or a
class-balanced seeded fraction) and is scored on the test split's:

- ``attentive``: :class:`~mmvit.pretrain.probes.AttentiveProbe` on the patch tokens (V-JEPA's protocol),
- ``linear``: :class:`~mmvit.pretrain.probes.LinearProbe` on the pooled features (MAE's),
- ``knn``: :func:`~mmvit.pretrain.probes.knn_predict` on the pooled features (DINO's weighted vote),
- ``head``: the model's own classifier (a supervised baseline; nothing is trained).

Each task (label space) gets probes of its own, trained on its examples of every kind. AdamW with a cosine
schedule, a fixed seed, a few epochs: every result is reproducible and fast on a CPU at demo sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.eval.features import FeatureSet
from mmvit.pretrain.probes import AttentiveProbe, LinearProbe, knn_predict

PROBES = ("attentive", "linear", "knn", "head")


@dataclasses.dataclass
class ProbeSettings:
    """Attributes:
        epochs, batch_size, lr, weight_decay: AdamW with linear warm-up (one epoch) then cosine decay.
        heads: attention heads of the attentive probe (``None``: the largest of 8, 4, 2, 1 dividing the width).
        depth: blocks of the attentive probe (``depth - 1`` self-attention blocks, then the cross-attention pool).
        k, temperature: k-NN (DINO's k = 20, T = 0.07; k is capped at the training examples).
        seed: probe initialisation and batch order.
    """

    epochs: int = 20
    # On the demo's 900 training images, 500 steps at lr 3e-3 left the attentive probe at ~30% top-1 on its
    # own training set (underfitted) for every frozen encoder; 800 at 1e-2 fit it and gained 10-20 points of
    # test top-1 on the random and MAE encoders alike.
    min_steps: int = 800
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.05
    heads: int | None = None
    depth: int = 1
    k: int = 20
    temperature: float = 0.07
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.epochs < 1 or self.min_steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.k < 1
                or self.temperature <= 0 or self.depth < 1):
            raise ValueError(f"invalid probe settings {self}")


# -- training subsets ------------------------------------------------------------------------------------------


def balanced_subset(labels: Sequence[int] | torch.Tensor, tasks: Sequence[str], fraction: float, seed: int = 0
                    ) -> list[int]:
    """Rows of a class-balanced ``fraction`` of the examples, per task: every class of a task with ``n`` examples
    keeps ``min(count, max(1, round(fraction * n / classes)))`` of its examples, drawn without replacement by
    a generator seeded with ``seed`` (the same seed gives the same subset). Sorted row indices."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labels fraction must be in (0, 1], got {fraction}")
    labels = [int(x) for x in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    if len(labels) != len(tasks):
        raise ValueError(f"{len(labels)} labels for {len(tasks)} tasks")
    if fraction == 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[int, list[int]]] = {}
    for i, (y, t) in enumerate(zip(labels, tasks)):
        groups.setdefault(t, {}).setdefault(y, []).append(i)
    rows: list[int] = []
    for t in sorted(groups):
        classes = groups[t]
        n = sum(len(v) for v in classes.values())
        per_class = max(1, int(math.floor(fraction * n / len(classes) + 0.5)))
        for y in sorted(classes):
            members = np.asarray(classes[y])
            take = min(per_class, len(members))
            rows += members[rng.permutation(len(members))[:take]].tolist()
    return sorted(rows)


def subset_examples(fs: FeatureSet, fraction: float, seed: int = 0) -> FeatureSet:
    """The views of a class-balanced ``fraction`` of the examples of ``fs`` (sorted by id and view): examples
    are chosen once each, by their first view, so every view of a chosen example is kept."""
    first: dict[str, int] = {}
    for i, example in enumerate(fs.ids):
        first.setdefault(example, i)
    rows = list(first.values())
    chosen = {fs.ids[rows[j]] for j in balanced_subset(fs.labels[rows], [fs.tasks[r] for r in rows], fraction,
                                                        seed)}
    return fs.select([i for i, example in enumerate(fs.ids) if example in chosen])


LIST_SOURCES = ("image_list", "video_list")


def subset_split(data_cfg: Mapping, split: str, fraction: float, seed: int, out_dir: str) -> dict | None:
    """A data section whose ``split`` reads only a class-balanced ``fraction`` of its samples
    (:func:`balanced_subset` over the labels the list files give), so that the rest is never decoded.

    Every source of the split must be an ``image_list``/``video_list``; the kept lines of each list are written
    to ``out_dir`` (same text, same root), and the new sources point there. ``None`` when some source is not
    a list (the caller then reads the whole split and subsets the features).
    """
    import copy

    from mmvit.data.sources.annotations import parse_list
    from mmvit.eval.plan import split_sources

    sources = split_sources(dict(data_cfg), split)
    if not sources or any(e.get("type") not in LIST_SOURCES or "list" not in e for e in sources):
        return None
    labels, tasks, where = [], [], []
    for si, e in enumerate(sources):
        for entry in parse_list(e["list"], e.get("format", "auto")).entries:
            if entry.label is None or "error" in entry.extra:
                continue
            labels.append(str(entry.label))
            tasks.append(str(e.get("task", "default")))
            where.append((si, entry.line))
    names = sorted(set(labels))  # raw labels -> indices, only to group examples by class
    keep = balanced_subset([names.index(y) for y in labels], tasks, fraction, seed)
    chosen: dict[int, set[int]] = {}
    for i in keep:
        chosen.setdefault(where[i][0], set()).add(where[i][1])
    os.makedirs(out_dir, exist_ok=True)
    new_sources = []
    for si, e in enumerate(sources):
        with open(e["list"]) as f:
            lines = f.read().splitlines()
        path = os.path.join(out_dir, f"{split}_{si}_{os.path.basename(e['list'])}")
        with open(path, "w") as f:
            f.writelines(line + "\n" for n, line in enumerate(lines, 1) if n in chosen.get(si, set()))
        entry = dict(e, list=path, root=e.get("root") or os.path.dirname(os.path.abspath(e["list"])))
        new_sources.append(entry)
    data = copy.deepcopy(dict(data_cfg))
    splits = dict(data.get("splits") or {})
    splits[split] = dict(splits.get(split) or {}, sources=new_sources)
    data["splits"] = splits
    return data


# -- probe training --------------------------------------------------------------------------------------------


def _schedule(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=gen).split(batch_size))


def _stack_tokens(tokens: Sequence[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed tokens ``[N, D]`` of ``rows`` and their example index ``[N]`` (0 .. len(rows) - 1)."""
    chosen = [tokens[int(i)] for i in rows]
    lengths = torch.tensor([len(t) for t in chosen])
    return torch.cat(chosen), torch.repeat_interleave(torch.arange(len(chosen)), lengths)


def default_heads(dim: int) -> int:
    return next(h for h in (8, 4, 2, 1) if dim % h == 0)


def _fit(module: nn.Module, n: int, step_loss, s: ProbeSettings) -> nn.Module:
    gen = torch.Generator().manual_seed(s.seed)
    steps_per_epoch = math.ceil(n / s.batch_size)
    epochs = max(s.epochs, math.ceil(s.min_steps / steps_per_epoch))
    decay = [p for p in module.parameters() if p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    sched = _schedule(opt, epochs * steps_per_epoch, steps_per_epoch)
    module.train()
    # A probe step is a few small matmuls: on a CPU, intra-op threads only add synchronisation (measured on
    # 2 busy cores: 30x slower with 2 threads than with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                for rows in _batches(n, s.batch_size, gen):
                    loss = step_loss(rows)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    return module.eval()


def train_attentive(tokens: Sequence[torch.Tensor], labels: torch.Tensor, num_classes: int,
                    s: ProbeSettings = ProbeSettings()) -> AttentiveProbe:
    """An attentive probe fitted to per-example tokens ``[n_i, D]`` and ``labels [N]``."""
    if not len(tokens):
        raise ValueError("no training examples for the attentive probe")
    dim = tokens[0].shape[-1]
    torch.manual_seed(s.seed)
    probe = AttentiveProbe(dim, num_classes, heads=s.heads or default_heads(dim), depth=s.depth)
    labels = labels.long()

    def loss(rows: torch.Tensor) -> torch.Tensor:
        x, example = _stack_tokens(tokens, rows)
        return F.cross_entropy(probe.head(probe.pool(x, example, len(rows))), labels[rows])

    return _fit(probe, len(tokens), loss, s)


@torch.no_grad()
def predict_attentive(probe: AttentiveProbe, tokens: Sequence[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    out = []
    for rows in torch.arange(len(tokens)).split(batch_size):
        x, example = _stack_tokens(tokens, rows)
        out.append(probe.head(probe.pool(x, example, len(rows))))
    return torch.cat(out) if out else torch.zeros(0, probe.head.out_features)


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 s: ProbeSettings = ProbeSettings()) -> LinearProbe:
    """A linear probe (BatchNorm without affine, then linear) fitted to ``features [N, D]``."""
    if not len(features):
        raise ValueError("no training examples for the linear probe")
    torch.manual_seed(s.seed)
    probe = LinearProbe(features.shape[1], num_classes)
    features, labels = features.float(), labels.long()

    def loss(rows: torch.Tensor) -> torch.Tensor:
        if len(rows) == 1:  # BatchNorm cannot train on one example: pair it with itself
            rows = rows.repeat(2)
        return F.cross_entropy(probe(features[rows]), labels[rows])

    return _fit(probe, len(features), loss, s)


# -- evaluation ------------------------------------------------------------------------------------------------


def fit_task_probe(probe: str, train: FeatureSet, num_classes: int, s: ProbeSettings
                   ) -> Callable[[FeatureSet], torch.Tensor]:
    """One task's probe fitted to ``train`` (that task's examples only): a function from a test set of the task
    to its predicted classes ``[N_test]``."""
    if probe == "head":
        def head(test: FeatureSet) -> torch.Tensor:
            if test.logits is None:
                raise ValueError("probe 'head' needs the model's logits (extract with logits for this encoder)")
            return test.logits[:, :num_classes].argmax(1)
        return head
    if probe == "knn":
        k = min(s.k, len(train))
        return lambda test: knn_predict(train.features, train.labels, test.features, num_classes, k=k,
                                        temperature=s.temperature).argmax(1)
    if probe == "linear":
        linear = train_linear(train.features, train.labels, num_classes, s)
        return lambda test: linear(test.features.float()).argmax(1)
    if probe == "attentive":
        if train.tokens is None:
            raise ValueError("probe 'attentive' needs patch tokens (extract with tokens)")
        attentive = train_attentive(train.tokens, train.labels, num_classes, s)

        def predict(test: FeatureSet) -> torch.Tensor:
            if test.tokens is None:
                raise ValueError("probe 'attentive' needs patch tokens (extract with tokens)")
            return predict_attentive(attentive, test.tokens).argmax(1)
        return predict
    raise KeyError(f"unknown probe {probe!r}; probes: {list(PROBES)}")


def groups(test: FeatureSet) -> list[tuple[str, str]]:
    """``(kind, task)`` groups to report: each combination present, every kind over its tasks (when it has
    several) and every task over its kinds (when it has several); ``all`` marks the aggregated side."""
    pairs = sorted(set(zip(test.kinds, test.tasks)))
    out = list(pairs)
    for kind in sorted({k for k, _ in pairs}):
        if sum(k == kind for k, _ in pairs) > 1:
            out.append((kind, "all"))
    for task in sorted({t for _, t in pairs}):
        if sum(t == task for _, t in pairs) > 1:
            out.append(("all", task))
    return out


def probe_rows(probe: str, train: FeatureSet, tests: Mapping[str | None, FeatureSet],
               num_classes: Mapping[str, int], s: ProbeSettings, **fields) -> list[dict]:
    """One probe per task, trained once on ``train`` and scored on every test set of ``tests`` (a level name,
    or ``None`` for no level, to its test features): one row per test set and (kind, task) group, in order,
    with ``top1`` and ``n`` on that test set, ``train_n`` training examples of the task, and the key as
    ``level`` (unset for ``None``)."""
    tasks = sorted({t for test in tests.values() for t in test.tasks})
    for task in tasks:
        if task not in num_classes:
            raise KeyError(f"task {task!r} of the test split is not in the class tables {list(num_classes)}")
    state = {key: (torch.zeros(len(test), dtype=torch.bool), torch.zeros(len(test), dtype=torch.bool))
             for key, test in tests.items()}  # (correct, scored) per test set
    train_n: dict[str, int] = {}
    for task in tasks:
        tr = train.rows(task=task)
        train_n[task] = len(tr)
        if not tr:
            continue  # no training example of this task: reported with n = 0
        predict = fit_task_probe(probe, train.select(tr), num_classes[task], s)
        for key, test in tests.items():
            te = test.rows(task=task)
            if not te:
                continue
            idx = torch.tensor(te)
            correct, scored = state[key]
            correct[idx] = predict(test.select(te)).cpu() == test.labels[idx]
            scored[idx] = True
    rows = []
    for key, test in tests.items():
        correct, scored = state[key]
        level = {} if key is None else {"level": key}
        for kind, task in groups(test):
            sel = torch.tensor([i for i in range(len(test)) if (kind == "all" or test.kinds[i] == kind)
                                and (task == "all" or test.tasks[i] == task) and scored[i]], dtype=torch.long)
            n = int(sel.numel())
            rows.append({**fields, **level, "probe": probe, "kind": kind, "task": task,
                         "top1": float(correct[sel].float().mean()) if n else float("nan"), "n": n,
                         "train_n": sum(train_n.values()) if task == "all" else train_n.get(task, 0)})
    return rows


# -- results ---------------------------------------------------------------------------------------------------

COLUMNS = ("encoder", "probe", "level", "kind", "task", "top1", "n", "train_n")


def merge_rows(old: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """``old`` without the rows of the encoders in ``new``, then ``new`` (re-running an encoder replaces it)."""
    replaced = {r.get("encoder") for r in new}
    return [r for r in old if r.get("encoder") not in replaced] + list(new)


def format_table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c, "")
            cells.append(f"{100 * v:.1f}" if c == "top1" and isinstance(v, float) and not math.isnan(v)
                         else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(top1 in %; n: test examples; train_n: training examples the probe saw)\n"


def compare(rows: Sequence[dict], encoder: str, probe: str = "attentive") -> list[dict]:
    """Per (level, kind, task): ``encoder``'s ``probe`` top-1 against every other encoder's best probe (its own
    head included). ``beats`` is True when it is strictly higher than each of them."""
    out = []
    mine = [r for r in rows if r["encoder"] == encoder and r["probe"] == probe]
    for r in mine:
        key = (r["level"], r["kind"], r["task"])
        best: dict[str, tuple[float, str]] = {}
        for o in rows:
            if o["encoder"] == encoder or (o["level"], o["kind"], o["task"]) != key or math.isnan(o["top1"]):
                continue
            if o["encoder"] not in best or o["top1"] > best[o["encoder"]][0]:
                best[o["encoder"]] = (o["top1"], o["probe"])
        out.append({"encoder": encoder, "probe": probe, "level": key[0], "kind": key[1], "task": key[2],
                    "top1": r["top1"], "baselines": {e: {"top1": v, "probe": p} for e, (v, p) in sorted(best.items())},
                    "beats": bool(best) and all(r["top1"] > v for v, _ in best.values())})
    return out


def format_comparison(comparison: Sequence[dict]) -> str:
    lines = []
    for c in comparison:
        base = ", ".join(f"{e} {100 * b['top1']:.1f} ({b['probe']})" for e, b in c["baselines"].items())
        lines.append(f"{'BEATS' if c['beats'] else 'does not beat'}: {c['encoder']} {c['probe']} "
                     f"{100 * c['top1']:.1f} at {c['level']}, {c['kind']}/{c['task']} vs {base}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_results(out_dir: str, rows: Sequence[dict], info: Mapping, append: bool = False,
                  compare_with: str | None = None) -> list[str]:
    """``results.json`` (``{"rows": [...], "runs": [info, ...]}``, and ``comparison`` for ``compare_with``: see
    :func:`compare`) and ``results.md``; with ``append`` the rows of other encoders already in ``results.json``
    are kept."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    old_rows: list[dict] = []
    runs: list[dict] = []
    if append and os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        old_rows, runs = old.get("rows", []), old.get("runs", [])
    rows = merge_rows(old_rows, rows)
    runs = runs + [dict(info)]
    result: dict = {"rows": rows, "runs": runs}
    if compare_with:
        result["comparison"] = compare(rows, compare_with)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    md = os.path.join(out_dir, "results.md")
    with open(md, "w") as f:
        f.write(format_table(rows))
        if compare_with:
            f.write("\n" + format_comparison(result["comparison"]))
    return [path, md]

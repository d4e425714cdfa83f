"""One rank's evaluation pass: run the model over a loader, keep per-view scores keyed by video id, time it.

A loader yields :class:`~mmvit.packing.PackedBatch` es whose ``meta`` dicts name each example's source
(``video_id`` or ``id``), its ``view`` and its ``kind``. Nothing here relies on the order of examples or on
which rank saw them: scores leave with their ids and are combined by id after gathering
(:func:`gather_outputs`, then ``aggregate_views``).

Throughput is measured twice per pass: the model's forward time alone (what the network costs), and the
wall time of the whole loop (decoding, resizing, packing and waiting included).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import torch

from mmvit.eval.aggregate import ViewScores
from mmvit.packing import PackedBatch


@dataclasses.dataclass
class Throughput:
    """Counts and seconds of one pass on one rank, or summed over ranks (see :meth:`merge`).

    Attributes:
        examples: evaluated views (clips or images).
        tokens: real tokens fed to the model (padding excluded).
        slots: token slots in the batches (``rows x seq_len``, padding included).
        batches: forward calls.
        forward_s: seconds in ``model(batch)`` (synchronized on CUDA), summed over ranks.
        wall_s: seconds of the whole loop; over ranks, the slowest rank's.
        ranks: how many ranks were merged.
    """

    examples: int = 0
    tokens: int = 0
    slots: int = 0
    batches: int = 0
    forward_s: float = 0.0
    wall_s: float = 0.0
    ranks: int = 1

    @staticmethod
    def merge(parts: Iterable[Throughput]) -> Throughput:
        parts = list(parts)
        return Throughput(examples=sum(p.examples for p in parts), tokens=sum(p.tokens for p in parts),
                          slots=sum(p.slots for p in parts), batches=sum(p.batches for p in parts),
                          forward_s=sum(p.forward_s for p in parts), wall_s=max((p.wall_s for p in parts), default=0.0),
                          ranks=sum(p.ranks for p in parts))

    def rates(self) -> dict[str, float]:
        """``model_*``: per process, forward time only (what one device sustains).
        ``e2e_*``: the whole job, all ranks together, over the slowest rank's wall time."""
        def div(a: float, b: float) -> float:
            return a / b if b > 0 else float("nan")

        return {
            "model_clips_per_s": div(self.examples, self.forward_s),
            "model_tokens_per_s": div(self.tokens, self.forward_s),
            "e2e_clips_per_s": div(self.examples, self.wall_s),
            "e2e_tokens_per_s": div(self.tokens, self.wall_s),
            "tokens_per_clip": div(self.tokens, self.examples),
            "padding_fraction": 1.0 - div(self.tokens, self.slots) if self.slots else float("nan"),
        }


@dataclasses.dataclass
class RankOutput:
    """What one rank evaluated in one pass: per-view scores, the kind of each view's source, timings, and
    the bad samples the loader skipped (cause -> count; one per failed view)."""

    scores: ViewScores
    kinds: list[str]
    throughput: Throughput
    bad: dict[str, int] = dataclasses.field(default_factory=dict)
    tasks: list[str] = dataclasses.field(default_factory=list)  # each view's task (empty: all "default")

    @staticmethod
    def concat(parts: list[RankOutput]) -> RankOutput:
        """Merge the outputs of several ranks (or several loaders) of the same pass."""
        bad: dict[str, int] = {}
        for p in parts:
            for cause, n in p.bad.items():
                bad[cause] = bad.get(cause, 0) + int(n)
        return RankOutput(ViewScores.concat([p.scores for p in parts]), [k for p in parts for k in p.kinds],
                          Throughput.merge(p.throughput for p in parts), bad,
                          [t for p in parts for t in (p.tasks or ["default"] * len(p.kinds))])

    def view_tasks(self) -> list[str]:
        return self.tasks or ["default"] * len(self.kinds)

    def select(self, kind: str, task: str | None = None) -> ViewScores:
        """The views of one kind (``image`` or ``video``), and of one task when given."""
        tasks = self.view_tasks()
        rows = [i for i, k in enumerate(self.kinds) if k == kind and (task is None or tasks[i] == task)]
        s = self.scores
        if len(rows) == len(self.kinds):
            return s
        index = torch.tensor(rows, dtype=torch.long)
        logits = s.logits[index] if len(s.logits) else s.logits
        return ViewScores([s.video_ids[i] for i in rows], [s.views[i] for i in rows], s.labels[index], logits)


def example_key(meta: dict) -> tuple[str, int, str]:
    """``(video id, view, kind)`` of one example's metadata (images: their own id, view 0).

    The id is ``video_id`` (else ``id``, else ``path``), prefixed with ``source`` when the metadata names one:
    two sources may both hold a ``clip001.mp4``, and those are different videos.
    """
    vid = meta.get("video_id", meta.get("id", meta.get("path")))
    if vid is None:
        raise KeyError(f"example metadata names no video_id, id or path: {sorted(meta)}")
    source = meta.get("source")
    key = f"{source}:{vid}" if source else str(vid)
    return key, int(meta.get("view", 0) or 0), str(meta.get("kind", "video"))


@torch.inference_mode()
def evaluate_loader(model: torch.nn.Module, loader: Iterable[PackedBatch], *, device: torch.device | str = "cpu",
                    kinds: Iterable[str] | None = None, max_batches: int | None = None, warmup: bool = True,
                    lockstep: bool = False, dummy_batch: PackedBatch | None = None,
                    dtype: torch.dtype | None = None) -> RankOutput:
    """Evaluate every batch of ``loader``; logits are kept in float32 on the CPU.

    Args:
        model: returns logits ``[E, K]`` in batch order for a ``PackedBatch``; put in eval mode here.
        loader: yields ``PackedBatch`` with ``labels`` and ``meta`` (``video_id``/``id``, ``view``, ``kind``).
        device: where the model runs.
        kinds: keep only examples of these kinds (a mixed source evaluated for its videos skips its images).
        max_batches: stop after this many batches (smoke runs: some videos lose some of their views).
        warmup: run the first batch once untimed (lazy initialization, allocator and kernel caches), so that
            the forward time measures the steady state (never in lockstep).
        lockstep: the ranks agree before every batch whether any of them still has one (an all-reduce), and
            a rank that has run out forwards ``dummy_batch`` (or its last batch) and discards the result, so
            that every rank takes part in every forward: a ZeRO-3 forward gathers parameters from all ranks,
            and ranks hold different numbers of evaluation batches.
        dtype: the model's weight dtype; patches are cast to it (DeepSpeed's bf16/fp16 modes do not cast).
    """
    from mmvit import dist

    model.eval()
    device = torch.device(device)
    keep_kinds = set(kinds) if kinds is not None else None
    ids: list[str] = []
    views: list[int] = []
    kind_list: list[str] = []
    task_list: list[str] = []
    labels: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    tp = Throughput()
    start = time.perf_counter()
    it = iter(loader)
    def prepare(b: PackedBatch) -> PackedBatch:
        b = b.to(device)
        return b if dtype is None else dataclasses.replace(b, patches=b.patches.to(dtype))

    spare = None if dummy_batch is None else prepare(dummy_batch)
    step = 0
    while True:
        batch = next(it, None) if max_batches is None or step < max_batches else None
        if lockstep:
            more = dist.all_reduce_sum(torch.tensor([float(batch is not None)], device=device))
            if float(more[0]) == 0:
                break
            if batch is None:
                if spare is None:
                    raise RuntimeError("lockstep evaluation: this rank has no batch to join the others' forward "
                                       "with; pass dummy_batch")
                model(spare)
                continue
        elif batch is None:
            break
        if batch.labels is None or batch.meta is None:
            raise ValueError("evaluation batches need labels and meta (video_id/id, view, kind) per example")
        batch = prepare(batch)
        spare = batch if spare is None else spare
        if warmup and step == 0 and not lockstep:
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        step += 1
        t0 = time.perf_counter()
        out = model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tp.forward_s += time.perf_counter() - t0
        if out.shape[0] != batch.num_examples:
            raise ValueError(f"model returned {out.shape[0]} rows for {batch.num_examples} examples")
        keys = [example_key(m) for m in batch.meta]
        keep = [i for i, k in enumerate(keys) if keep_kinds is None or k[2] in keep_kinds]
        lengths = batch.lengths
        tp.batches += 1
        tp.examples += len(keep)
        tp.tokens += int(lengths[keep].sum()) if keep else 0
        # Slots of a batch shared by kept and skipped examples are charged in proportion to kept tokens.
        share = float(lengths[keep].sum()) / max(1, batch.num_tokens) if keep else 0.0
        tp.slots += round(batch.segment_ids.numel() * share)
        if not keep:
            continue
        index = torch.tensor(keep, dtype=torch.long)
        logits.append(out.detach().float().cpu()[index])
        labels.append(batch.labels.cpu().long()[index])
        for i in keep:
            ids.append(keys[i][0])
            views.append(keys[i][1])
            kind_list.append(keys[i][2])
            task_list.append(str(batch.meta[i].get("task", "default")))
    tp.wall_s = time.perf_counter() - start
    if logits:
        scores = ViewScores(ids, views, torch.cat(labels), torch.cat(logits))
    else:
        scores = ViewScores([], [], torch.zeros(0, dtype=torch.long), torch.zeros(0, 0))
    return RankOutput(scores, kind_list, tp, tasks=task_list)


def gather_outputs(outputs: list[RankOutput]) -> list[list[RankOutput]]:
    """Every rank's outputs (one per pass), indexed ``[rank][pass]``, on every rank (``all_gather_object``).

    Without an initialized process group (or with one rank) this is ``[outputs]``.
    """
    from mmvit import dist

    parts = dist.all_gather_object(outputs)
    if any(p is None or len(p) != len(outputs) for p in parts):
        raise RuntimeError("ranks ran different numbers of evaluation passes")
    return parts  # type: ignore[return-value]

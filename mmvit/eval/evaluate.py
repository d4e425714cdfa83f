"""One rank's share of every evaluation pass (the plan in plan.py), as ``RankOutput`` s for summary.py.

Work splits in two so that sharding can be tested without processes: :func:`evaluate_rank` runs every pass
over this rank's share of the data; :func:`mmvit.eval.summary.summarize` combines the outputs of all ranks
(``gather_outputs``). tools/eval_video.py, tools/eval_image.py and the trainer's periodic evaluation all
go through these two functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from mmvit.eval.plan import EvalPass, EvalSettings, pass_data_config, plan_passes
from mmvit.eval.runner import RankOutput, evaluate_loader

log = logging.getLogger("mmvit.eval")

LoaderFn = Callable[..., tuple[Any, Any]]


def _close(loader: Any, control: Any) -> None:
    for obj in (control, loader):
        close = getattr(obj, "close", None)
        if callable(close):
            close()


def evaluate_rank(model: torch.nn.Module, cfg: dict, settings: EvalSettings, *, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = "cpu", passes: list[EvalPass] | None = None,
                  loader_fn: LoaderFn | None = None, lockstep: bool = False, dummy_batch=None,
                  dtype: torch.dtype | None = None, tables=None) -> list[RankOutput]:
    """Run every pass over this rank's share of the split; one :class:`RankOutput` per pass, in order.

    Args:
        model: the classifier (``model(batch) -> [E, K]``).
        cfg: the full config (its ``data`` section is read).
        settings: what to evaluate.
        rank, world_size: this rank's share (the loader gives each sample to exactly one rank).
        device: where the model runs.
        passes: default :func:`plan_passes`.
        loader_fn: ``build_loader``-compatible callable (default ``mmvit.data.build_loader``).
        lockstep, dummy_batch: every rank takes part in every forward (see ``evaluate_loader``); for models
            whose forward is a collective (ZeRO-3).
        dtype: cast the patches to the model's dtype (bf16/fp16 weights).
        tables: the run's class tables (every split maps its labels through them).
    """
    if loader_fn is None:
        from mmvit.data import build_loader as loader_fn
    data_cfg = dict(cfg["data"])
    passes = plan_passes(settings, data_cfg) if passes is None else passes
    outputs = []
    for p in passes:
        loader, control = loader_fn(pass_data_config(data_cfg, p, settings), split=settings.split, rank=rank,
                                    world_size=world_size, seed=settings.seed,
                                    stage=p.stage(settings.patch_size), train=False, tables=tables)
        try:
            out = evaluate_loader(model, loader, device=device, kinds=[p.kind], max_batches=settings.max_batches,
                                  lockstep=lockstep, dummy_batch=dummy_batch, dtype=dtype)
        finally:
            _close(loader, control)
        stats = getattr(control, "stats", None)
        if callable(stats):
            out.bad = {str(k): int(v) for k, v in (stats().get("bad") or {}).items()}
            if out.bad:
                log.warning("rank %d, pass %s: bad samples skipped: %s", rank, p.name, out.bad)
        log.info("%s: %d views in %.1f s", p.name, out.throughput.examples, out.throughput.wall_s)
        outputs.append(out)
    return outputs



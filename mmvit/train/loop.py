"""The step loop: curriculum stage -> learning rate -> micro-batches -> global-mean loss -> update -> log,
evaluate and checkpoint. Setup lives in main.py, DeepSpeed behind engine.py.

One step on each rank: take ``gradient_accumulation_steps`` packed micro-batches, all-reduce their example
(or token) count, then forward/backward each with its per-example losses (from the objective) summed and
divided by that global count. Before each backward the ranks agree whether any of them saw a non-finite
loss; if so every rank poisons its gradient so that DeepSpeed's overflow check drops the whole update on
all ranks together (fp32 without ZeRO, which has no such check: ``Engine.drop_update``), and the step is
counted as skipped. ``max_nonfinite`` skipped steps in a row stop the run.

Stops (mmvit/train/preempt.py): the step's metrics all-reduce carries each rank's stop flag, so all ranks
save after the same step and leave the loop together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mmvit import checkpoint as ckpt
from mmvit import dist
from mmvit.config import Config
from mmvit.data.control import DataControl
from mmvit.data.stage import Stage
from mmvit.packing import PackedBatch
from mmvit.train import rng as rngs
from mmvit.train import validate
from mmvit.train.config import EvalConfig, TrainConfig
from mmvit.train.ema import EMA
from mmvit.train.engine import Engine
from mmvit.train.faults import Faults
from mmvit.train.loss import example_weights, local_count, normalised_loss
from mmvit.train.runlog import RunLog
from mmvit.train.schedule import lr_factor, stage_lr_scale


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row (or one where DeepSpeed cannot skip it)."""


@dataclasses.dataclass
class RunState:
    """What the loop carries from step to step; saved in every checkpoint."""

    step: int = 0                       # optimizer steps done (skipped ones included)
    skipped: int = 0                    # steps whose update was dropped
    streak: int = 0                     # skipped steps in a row
    stage_stats: dict = dataclasses.field(default_factory=dict)  # stage name -> steps, examples, tokens, cost


@dataclasses.dataclass
class Context:
    """Everything the loop uses, built once by main.py."""

    cfg: Config                         # the whole config (saved with checkpoints and the export)
    train: TrainConfig
    evalc: EvalConfig
    engine: Engine
    curriculum: Callable[[int], Stage]
    loader: Any                         # iterable of PackedBatch (mmvit.data.PackedLoader)
    control: DataControl
    ema: EMA | None
    log: RunLog
    faults: Faults
    rank: int
    world_size: int
    run_dir: str
    device: torch.device
    seed: int
    stop_requested: Callable[[], bool]  # a signal arrived on this rank
    stopper: Any = None                 # mmvit.train.preempt.Stopper: guards checkpoint saves
    classes: dict | None = None         # class tables as JSON, saved with every checkpoint
    tables: Any = None                  # the ClassTables the loaders map labels through
    stage: Stage | None = None
    dummy_batch: PackedBatch | None = None  # a batch to join lockstep evaluation forwards with (ZeRO-3)


def _to_device(batch: PackedBatch, device: torch.device, dtype: torch.dtype) -> PackedBatch:
    batch = batch.to(device, non_blocking=True)
    # DeepSpeed's bf16/fp16 modes do not cast inputs: the patches must match the weights.
    full = batch.full if batch.full is None else dataclasses.replace(batch.full, patches=batch.full.patches.to(dtype))
    return dataclasses.replace(batch, patches=batch.patches.to(dtype), full=full)


def _count_videos(batch: PackedBatch) -> int:
    if batch.meta:
        return sum(1 for m in batch.meta if m.get("kind") == "video")
    return int((batch.grid[:, 0] > 1).sum())


def _next(it_holder: list, loader) -> PackedBatch:
    try:
        return next(it_holder[0])
    except StopIteration:  # a finite training loader: start the next epoch
        it_holder[0] = iter(loader)
        return next(it_holder[0])


def train_step(ctx: Context, state: RunState, it_holder: list) -> dict:
    """One optimizer step; returns global metrics (identical on every rank)."""
    engine, train = ctx.engine, ctx.train
    t0 = time.perf_counter()
    batches = [_next(it_holder, ctx.loader) for _ in range(engine.micro_batches)]
    if ctx.dummy_batch is None:
        ctx.dummy_batch = batches[0]
    weights = [example_weights(b, train.loss_norm, engine.module) for b in batches]
    local = torch.tensor([local_count(weights)], dtype=torch.float64, device=ctx.device)
    global_count = float(dist.all_reduce_sum(local)[0])

    step_bad, bad_ranks = False, []
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    sums: dict[str, torch.Tensor] = {}
    for j, (batch, w) in enumerate(zip(batches, weights)):
        batch = _to_device(batch, ctx.device, engine.dtype)
        out = engine(batch)
        loss = ctx.faults.loss(normalised_loss(out.losses, w, global_count), state.step)
        # Collective: which ranks see a non-finite loss in this micro-batch (one slot per rank).
        flags = torch.zeros(ctx.world_size, dtype=torch.float32, device=ctx.device)
        flags[ctx.rank] = float(not torch.isfinite(loss.detach()))
        flags = dist.all_reduce_sum(flags)
        if flags.any():
            step_bad = True
            bad_ranks = sorted(set(bad_ranks) | set(torch.nonzero(flags).flatten().tolist()))
        if step_bad:
            # NaN gradients on every rank: DeepSpeed's norm check drops the update everywhere.
            engine.backward(loss * float("nan"))
        else:
            engine.backward(loss)
            loss_sum += loss.detach().double()
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0) + v.detach().double()
        if j == engine.micro_batches - 1:
            ctx.faults.before_update(engine, state.step, global_count)
            if step_bad:
                engine.drop_update()
        engine.step()

    applied = engine.step_applied
    if step_bad and applied:
        raise NonFiniteLossError(f"step {state.step}: a non-finite loss reached the optimizer; the weights are "
                                 f"no longer trustworthy, resume from the last checkpoint")
    examples = sum(b.num_examples for b in batches)
    tokens = sum(b.num_tokens for b in batches)
    slots = sum(b.segment_ids.numel() for b in batches)
    videos = sum(_count_videos(b) for b in batches)
    # Masked pretraining: the padding of the second packing (all tokens, batch.full) too.
    full_tokens = sum(b.full.num_tokens for b in batches if b.full is not None)
    full_slots = sum(b.full.segment_ids.numel() for b in batches if b.full is not None)
    stop = float(ctx.stop_requested())
    names = sorted(sums)
    totals = dist.all_reduce_sum(torch.tensor(
        [float(loss_sum), examples, tokens, slots, videos, stop, full_tokens, full_slots,
         *(float(sums[k]) for k in names)], dtype=torch.float64, device=ctx.device)).tolist()
    dt = time.perf_counter() - t0
    grad_norm = engine.grad_norm() if applied else None
    nan = float("nan")
    return {
        "loss": totals[0] if not step_bad else nan,
        **{f"train_{k}": (totals[8 + i] / max(1.0, totals[1]) if not step_bad else nan) for i, k in enumerate(names)},
        "examples": int(totals[1]), "tokens": int(totals[2]), "padding": 1.0 - totals[2] / max(1.0, totals[3]),
        **({"full_padding": 1.0 - totals[6] / totals[7]} if totals[7] else {}),
        "videos": int(totals[4]), "images": int(totals[1] - totals[4]),
        "examples_per_s": totals[1] / dt, "tokens_per_s": totals[2] / dt, "step_time": dt,
        "applied": applied, "nonfinite_loss": step_bad, "bad_ranks": bad_ranks, "grad_norm": grad_norm,
        "stop": totals[5] > 0,
    }


def run_validation(ctx: Context, state: RunState) -> None:
    """Evaluate on ``eval.split`` (and with the EMA weights), log one ``eval`` record on rank 0."""
    if not ctx.engine.module.uses_labels:  # pretraining has no labels to score: probe the exported encoder
        return
    model = ctx.engine.module.model
    kw = {"seed": ctx.seed, "device": ctx.device, "dtype": ctx.engine.dtype, "dummy_batch": ctx.dummy_batch,
          "tables": ctx.tables}
    res = validate.evaluate_model(model, ctx.cfg, ctx.evalc, **kw)
    ema = None
    if ctx.ema is not None and ctx.evalc.ema:
        ctx.ema.swap(ctx.engine.module)
        try:
            ema = validate.evaluate_model(model, ctx.cfg, ctx.evalc, **kw)
        finally:
            ctx.ema.swap(ctx.engine.module)
    if ctx.rank != 0:
        return
    values = validate.flat(res)
    if ema is not None:
        values.update(validate.flat(ema, "ema_"))
    ctx.log.record("eval", state.step, split=ctx.evalc.split, **values)
    extra = f"; EMA top-1 {ema['top1']:.4f}" if ema is not None else ""
    ctx.log.info(f"eval step {state.step} on {ctx.evalc.split} (videos per video after view aggregation): "
                 f"{validate.describe(res)}{extra}")
    for w in res["warnings"]:
        ctx.log.warning(f"eval: {w}")


def _guard(ctx: Context, what: str):
    method = getattr(ctx.stopper, what, None)
    return method() if method is not None else contextlib.nullcontext()


def save_checkpoint(ctx: Context, state: RunState) -> str:
    """Save on every rank, then (after a barrier) mark complete and prune on rank 0. Signals during the save
    only repeat a stop request, and the stop watchdog never exits during the marker write or the pruning."""
    with _guard(ctx, "saving"):
        return _save_checkpoint(ctx, state)


def _save_checkpoint(ctx: Context, state: RunState) -> str:
    ckpt_dir = os.path.join(ctx.run_dir, ckpt.CHECKPOINTS_DIR)
    tag = ckpt.tag_for(state.step)
    path = os.path.join(ckpt_dir, tag)
    if ckpt.is_complete(path):
        return path
    if ctx.rank == 0 and os.path.isdir(path):  # leftovers of an interrupted save of the same step
        shutil.rmtree(path)
    dist.barrier()
    client = {
        "step": state.step, "run_state": dataclasses.asdict(state),
        "stage": ctx.stage.to_dict() if ctx.stage is not None else None,
        "world_size": ctx.world_size, "data": dist.all_gather_object(ctx.control.state_dict()),
        "rng": dist.all_gather_object(rngs.rng_state()), "ema": ctx.ema.state_dict() if ctx.ema is not None else None,
        ckpt.CONFIG_KEY: ctx.cfg.to_dict(), ckpt.CLASSES_KEY: ctx.classes,
        ckpt.FROZEN_KEY: ctx.engine.frozen_state(),   # ZeRO-3 only (collective); None otherwise
    }
    t0 = time.perf_counter()
    ctx.engine.save(ckpt_dir, tag, client)
    dist.barrier()  # every rank has returned from its save
    if ctx.rank == 0:
        with _guard(ctx, "critical"):
            ckpt.mark_complete(path, {"step": state.step, "world_size": ctx.world_size,
                                      "zero_stage": ctx.engine.zero_stage, "precision": ctx.engine.precision})
            ckpt.prune(ckpt_dir, ctx.train.keep_checkpoints, protect=path)
    dist.barrier()
    ctx.log.record("event", state.step, event="checkpoint", path=path)
    ctx.log.info(f"saved checkpoint {path} in {time.perf_counter() - t0:.1f}s")
    return path


def announce_stages(ctx: Context, step: int) -> None:
    """Tell the loader the curriculum's stage of every batch it may start before the next step's call: step
    ``k``'s micro-batches are this rank's next batches (``micro_batches`` per step), so the stage a batch is built
    with depends on its index only (not on how far the workers ran ahead, which varies run to run).

    Every change is announced, a new name or cost with the same shape too (multigrid's ``T1/4`` and ``T1/2``
    under ``min_frames``): the loader compares whole stages, so a change held back here would reach the
    workers at whatever batch they had started when its step came, and the stream would differ run to run."""
    mb, g = ctx.engine.micro_batches, ctx.control.g  # g: batches handed out so far (step * mb)
    last = min(ctx.train.steps - 1, step + 1 + -(-ctx.control.max_ahead // mb))
    changes: list[tuple[int, Stage]] = []
    for k in range(step, max(step, last) + 1):
        stage = ctx.curriculum(k)
        if not changes or stage.to_dict() != changes[-1][1].to_dict():
            changes.append((g + (k - step) * mb, stage))
    if not ctx.control.announce(changes):
        ctx.log.warning(f"step {step}: the loader had started batches past a curriculum change before it was "
                        f"announced; the change applies a few batches late")


def _update_stage(ctx: Context, state: RunState) -> Stage:
    stage = ctx.curriculum(state.step)
    announce_stages(ctx, state.step)
    if ctx.stage is None or ctx.stage.name != stage.name:
        if ctx.stage is not None:
            prev = state.stage_stats.get(ctx.stage.name)
            if prev and prev["steps"]:
                ctx.log.info(f"stage {ctx.stage.name!r} ended: {prev['examples'] / prev['steps']:.1f} "
                             f"examples/step, {prev['tokens'] / prev['steps']:.0f} tokens/step")
        ctx.log.record("stage", state.step, name=stage.name, cost=stage.cost, stage=stage.to_dict())
        ctx.log.info(f"step {state.step}: curriculum stage {stage.name!r} (cost {stage.cost:.3f}): {stage.describe()}")
    ctx.stage = stage
    return stage


def _stage_summary(state: RunState) -> str:
    rows = [f"  {name:<22} {s['steps']:>7} steps  {s['examples'] / max(1, s['steps']):8.1f} examples/step  "
            f"{s['tokens'] / max(1, s['steps']):9.0f} tokens/step  (cost {s['cost']:.3f})"
            for name, s in state.stage_stats.items()]
    return "examples per step by curriculum stage:\n" + "\n".join(rows)


def run_loop(ctx: Context, state: RunState) -> str:
    """Train until ``train.steps``; returns ``"done"`` or ``"stopped"`` (a signal: checkpoint saved)."""
    train, evalc = ctx.train, ctx.evalc
    it_holder: list[Iterator] = [iter(ctx.loader)]
    while state.step < train.steps:
        stage = _update_stage(ctx, state)
        scale = stage_lr_scale(stage.cost, train.lr_scaling)
        lr = train.lr * scale * lr_factor(state.step, total_steps=train.steps, warmup_steps=train.warmup_steps,
                                          schedule=train.schedule, min_lr_ratio=train.min_lr_ratio,
                                          warmup_init=train.warmup_init)
        ctx.engine.set_lr(lr)
        m = train_step(ctx, state, it_holder)
        step = state.step
        state.step += 1
        if m["applied"]:
            state.streak = 0
            ctx.engine.module.after_step(state.step, train.steps)
            if ctx.ema is not None:
                ctx.ema.update(ctx.engine.module)
        else:
            state.skipped += 1
            fp16_scale = ctx.engine.fp16 and not m["nonfinite_loss"]  # loss-scale calibration
            state.streak += 0 if fp16_scale else 1
            why = f"non-finite loss on ranks {m['bad_ranks']}" if m["nonfinite_loss"] else "non-finite gradients"
            ctx.log.warning(f"step {step} skipped ({why}); {state.streak} in a row, {state.skipped} in total")
        st = state.stage_stats.setdefault(stage.name, {"steps": 0, "examples": 0, "tokens": 0, "cost": stage.cost})
        st["steps"] += 1
        st["examples"] += m["examples"]
        st["tokens"] += m["tokens"]
        if step % train.log_every == 0 or not m["applied"]:
            ctx.log.record("train", step, lr=lr, lr_scale=scale, stage=stage.name, cost=stage.cost,
                           skipped=not m["applied"], skipped_total=state.skipped,
                           **{k: v for k, v in m.items() if k not in ("applied", "stop", "bad_ranks")})
        ctx.log.progress(state.step, loss=m["loss"], ex_s=m["examples_per_s"], tok_s=m["tokens_per_s"],
                         pad=m["padding"], stage=stage.name)
        if state.streak >= train.max_nonfinite:
            raise NonFiniteLossError(
                f"{state.streak} steps in a row were skipped (last: step {step}, non-finite loss on ranks "
                f"{m['bad_ranks']}); stopping (train.max_nonfinite={train.max_nonfinite}). The last complete "
                f"checkpoint is intact: lower train.lr, check the data, or resume with --resume auto.")
        ctx.faults.after_step()
        if m["stop"]:
            here = ", ".join(getattr(ctx.stopper, "received", [])) or "none here, another rank's"
            ctx.log.info(f"stop requested (signal: {here}): saving at step {state.step}")
            save_checkpoint(ctx, state)
            return "stopped"
        if evalc.every and state.step % evalc.every == 0 and state.step < train.steps:
            run_validation(ctx, state)
        if train.save_every and state.step % train.save_every == 0 and state.step < train.steps:
            save_checkpoint(ctx, state)
    save_checkpoint(ctx, state)
    ctx.log.info(_stage_summary(state))
    if evalc.at_end or evalc.every:
        run_validation(ctx, state)
    return "done"

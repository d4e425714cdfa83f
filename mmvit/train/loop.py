"""The step loop: curriculum stage -> learning rate -> micro-batches -> global-mean loss -> update -> log,
evaluate and checkpoint. Setup lives in main.py, DeepSpeed calls in engine.py.

One step on each rank: take ``gradient_accumulation_steps`` packed micro-batches, all-reduce their example
(or token) count, then forward/backward each with its loss divided by that global count. Before each
backward the ranks agree whether any of them saw a non-finite loss; if so every rank poisons its gradient
so that DeepSpeed's overflow check drops the whole update on all ranks together, and the step is counted
as skipped. ``max_nonfinite`` skipped steps in a row stop the run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from mmvit.packing import PackedBatch
from mmvit.train import checkpoint as ckpt
from mmvit.train import engine as ds
from mmvit.train.curriculum import loader_stage
from mmvit.train.loss import (
    example_losses,
    example_weights,
    local_count,
    normalised_loss,
)
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

    cfg: Any                            # the whole Config (saved with checkpoints and the export)
    train: Any                          # TrainConfig
    evalc: Any                          # EvalConfig
    engine: Any
    curriculum: Any                     # step -> stage
    loader: Any
    control: Any
    eval_loader: Any
    ema: Any
    log: Any                            # RunLog
    rank: int
    world_size: int
    run_dir: str
    device: torch.device
    dtype: torch.dtype
    stop_requested: Any                 # () -> bool: a signal arrived on this rank
    stage: dict = dataclasses.field(default_factory=dict)


def _to_device(batch: PackedBatch, device: torch.device, dtype: torch.dtype) -> PackedBatch:
    batch = batch.to(device, non_blocking=True)
    # DeepSpeed's bf16/fp16 modes do not cast inputs: the patches must match the weights.
    return dataclasses.replace(batch, patches=batch.patches.to(dtype))


def _count_videos(batch: PackedBatch) -> int:
    if batch.meta:
        return sum(1 for m in batch.meta if m.get("kind") == "video" or m.get("is_video"))
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
    gas = engine.gradient_accumulation_steps()
    t0 = time.perf_counter()
    batches = [_next(it_holder, ctx.loader) for _ in range(gas)]
    weights = [example_weights(b, train.loss_norm) for b in batches]
    local = torch.tensor([local_count(batches, train.loss_norm)], dtype=torch.float64, device=ctx.device)
    global_count = float(ds.all_reduce_sum(local)[0])

    inject = state.step in train.fault.nan_steps and ctx.rank == train.fault.nan_rank
    step_bad, bad_ranks = False, []
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for j, (batch, w) in enumerate(zip(batches, weights)):
        batch = _to_device(batch, ctx.device, ctx.dtype)
        logits = engine(batch)
        losses = example_losses(logits, batch.labels, train.label_smoothing)
        loss = normalised_loss(losses, w, global_count)
        if inject:
            loss = loss * float("nan")
        # Collective: which ranks see a non-finite loss in this micro-batch (one slot per rank).
        flags = torch.zeros(ctx.world_size, dtype=torch.float32, device=ctx.device)
        flags[ctx.rank] = float(not torch.isfinite(loss.detach()))
        flags = ds.all_reduce_sum(flags)
        if flags.any():
            step_bad = True
            bad_ranks = sorted(set(bad_ranks) | set(torch.nonzero(flags).flatten().tolist()))
            if not ds.can_skip_nonfinite(engine):
                raise NonFiniteLossError(
                    f"non-finite loss at step {state.step} on ranks {bad_ranks}; ZeRO stage 0 in fp32 has no "
                    f"overflow check in DeepSpeed, so the step cannot be skipped: nothing was applied. Use "
                    f"zero_optimization.stage >= 1 or bf16 to skip such steps instead.")
        if step_bad:
            # NaN gradients on every rank: DeepSpeed's norm check drops the update everywhere.
            ds.backward(engine, loss * float("nan"))
        else:
            ds.backward(engine, loss)
            loss_sum += loss.detach().double()
            correct += (logits.detach().argmax(-1) == batch.labels).double().sum()
        if j == gas - 1 and train.fault.grad_dump and state.step == 0:
            grads = ds.full_grads(engine)  # collective
            if ctx.rank == 0:
                torch.save({"grads": grads, "global_count": global_count}, train.fault.grad_dump)
        engine.step()

    applied = bool(engine.was_step_applied())
    if step_bad and applied:
        raise NonFiniteLossError(f"step {state.step}: a non-finite loss reached the optimizer; the weights are "
                                 f"no longer trustworthy, resume from the last checkpoint")
    examples = sum(b.num_examples for b in batches)
    tokens = sum(b.num_tokens for b in batches)
    slots = sum(b.segment_ids.numel() for b in batches)
    videos = sum(_count_videos(b) for b in batches)
    stop = float(ctx.stop_requested())
    totals = ds.all_reduce_sum(torch.tensor([float(loss_sum), float(correct), examples, tokens, slots, videos, stop],
                                            dtype=torch.float64, device=ctx.device)).tolist()
    dt = time.perf_counter() - t0
    grad_norm = engine.get_global_grad_norm() if applied else None
    return {
        "loss": totals[0] if not step_bad else float("nan"),
        "train_top1": totals[1] / max(1.0, totals[2]) if not step_bad else float("nan"),
        "examples": int(totals[2]), "tokens": int(totals[3]), "padding": 1.0 - totals[3] / max(1.0, totals[4]),
        "videos": int(totals[5]), "images": int(totals[2] - totals[5]),
        "examples_per_s": totals[2] / dt, "tokens_per_s": totals[3] / dt, "step_time": dt,
        "applied": applied, "nonfinite_loss": step_bad, "bad_ranks": bad_ranks,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "stop": totals[6] > 0,
    }


@torch.no_grad()
def evaluate(ctx: Context) -> dict:
    """Top-1/top-5 and loss over the eval split, summed over ranks. Ranks step in lockstep (an all-reduce per
    batch), so a rank that runs out first keeps joining the collectives; under ZeRO-3 it repeats its last
    batch, whose result is discarded, because every forward gathers parameters from all ranks."""
    engine = ctx.engine
    engine.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, count
    it, last, n = iter(ctx.eval_loader), None, 0
    zero3 = ds.zero_stage(engine) == 3
    while True:
        batch = None
        if ctx.evalc.batches is None or n < ctx.evalc.batches:
            batch = next(it, None)
        more = ds.all_reduce_sum(torch.tensor([float(batch is not None)], device=ctx.device))
        if float(more[0]) == 0:
            break
        if batch is None:
            if zero3 and last is not None:
                engine(last)
            continue
        n += 1
        last = batch = _to_device(batch, ctx.device, ctx.dtype)
        logits = engine(batch).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == batch.labels[:, None]
        sums += torch.stack([example_losses(logits, batch.labels).sum().double(), hit[:, 0].sum().double(),
                             hit.any(-1).sum().double(), torch.tensor(float(len(batch.labels)), device=ctx.device,
                                                                       dtype=torch.float64)])
    engine.train()
    loss, top1, top5, count = ds.all_reduce_sum(sums).tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


def run_eval(ctx: Context, state: RunState) -> None:
    if ctx.eval_loader is None:
        return
    res = evaluate(ctx)
    extra = {}
    if ctx.ema is not None and ctx.evalc.ema:
        ctx.ema.swap(ctx.engine.module)
        try:
            extra = {f"ema_{k}": v for k, v in evaluate(ctx).items() if k != "count"}
        finally:
            ctx.ema.swap(ctx.engine.module)
    ctx.log.record("eval", state.step, split=ctx.evalc.split, **res, **extra)
    ema = f", EMA top-1 {extra['ema_top1']:.4f}" if extra else ""
    ctx.log.info(f"eval step {state.step} on {ctx.evalc.split} ({res['count']} examples): loss {res['loss']:.4f}, "
                 f"top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f}{ema}")


def save_checkpoint(ctx: Context, state: RunState) -> str:
    """Save on every rank, then (after a barrier) mark complete and prune on rank 0."""
    ckpt_dir = os.path.join(ctx.run_dir, "checkpoints")
    tag = ckpt.tag_for(state.step)
    path = os.path.join(ckpt_dir, tag)
    if ckpt.is_complete(path):
        return path
    if ctx.rank == 0 and os.path.isdir(path):  # leftovers of an interrupted save of the same step
        import shutil

        shutil.rmtree(path)
    ds.barrier()
    client = {
        "step": state.step, "run_state": dataclasses.asdict(state), "stage": ctx.stage,
        "world_size": ctx.world_size, "data": ds.all_gather_object(ctx.control.state_dict()),
        "rng": ds.all_gather_object(ckpt.rng_state()), "ema": ctx.ema.state_dict() if ctx.ema is not None else None,
        "config": ctx.cfg.to_dict(),
    }
    t0 = time.perf_counter()
    ds.save(ctx.engine, ckpt_dir, tag, client)
    ds.barrier()  # every rank has returned from its save
    if ctx.rank == 0:
        ckpt.mark_complete(path, {"step": state.step, "world_size": ctx.world_size,
                                  "zero_stage": ds.zero_stage(ctx.engine)})
        ckpt.prune(ckpt_dir, ctx.train.keep_checkpoints, protect=path)
    ds.barrier()
    ctx.log.record("event", state.step, event="checkpoint", path=path)
    ctx.log.info(f"saved checkpoint {path} in {time.perf_counter() - t0:.1f}s")
    return path


def _update_stage(ctx: Context, state: RunState) -> dict:
    stage = ctx.curriculum(state.step)
    if loader_stage(stage) != loader_stage(ctx.stage) or not ctx.stage:
        ctx.control.set_stage(loader_stage(stage))
        if ctx.stage.get("name") != stage["name"]:
            prev = state.stage_stats.get(ctx.stage.get("name"))
            if prev and prev["steps"]:
                ctx.log.info(f"stage {ctx.stage['name']!r} ended: {prev['examples'] / prev['steps']:.1f} "
                             f"examples/step, {prev['tokens'] / prev['steps']:.0f} tokens/step")
            ctx.log.record("stage", state.step, name=stage["name"], cost=stage["cost"], stage=loader_stage(stage))
            ctx.log.info(f"step {state.step}: curriculum stage {stage['name']!r} (cost {stage['cost']:.3f}): "
                         f"{loader_stage(stage)}")
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
        scale = stage_lr_scale(stage["cost"], train.lr_scaling)
        lr = train.lr * scale * lr_factor(state.step, total_steps=train.steps, warmup_steps=train.warmup_steps,
                                          schedule=train.schedule, min_lr_ratio=train.min_lr_ratio,
                                          warmup_init=train.warmup_init)
        ds.set_lr(ctx.engine, lr)
        m = train_step(ctx, state, it_holder)
        step = state.step
        state.step += 1
        if m["applied"]:
            state.streak = 0
            if ctx.ema is not None:
                ctx.ema.update(ctx.engine.module)
        else:
            state.skipped += 1
            fp16_scale = ctx.engine.fp16_enabled() and not m["nonfinite_loss"]  # loss-scale calibration
            state.streak += 0 if fp16_scale else 1
            why = f"non-finite loss on ranks {m['bad_ranks']}" if m["nonfinite_loss"] else "non-finite gradients"
            ctx.log.warning(f"step {step} skipped ({why}); {state.streak} in a row, {state.skipped} in total")
        st = state.stage_stats.setdefault(stage["name"], {"steps": 0, "examples": 0, "tokens": 0,
                                                          "cost": stage["cost"]})
        st["steps"] += 1
        st["examples"] += m["examples"]
        st["tokens"] += m["tokens"]
        if step % train.log_every == 0 or not m["applied"]:
            ctx.log.record("train", step, lr=lr, lr_scale=scale, stage=stage["name"], cost=stage["cost"],
                           skipped=not m["applied"], skipped_total=state.skipped,
                           **{k: v for k, v in m.items() if k not in ("applied", "stop", "bad_ranks")})
        ctx.log.progress(state.step, loss=m["loss"], ex_s=m["examples_per_s"], tok_s=m["tokens_per_s"],
                         pad=m["padding"], stage=stage["name"])
        if state.streak >= train.max_nonfinite:
            raise NonFiniteLossError(
                f"{state.streak} steps in a row were skipped (last: step {step}, non-finite loss on ranks "
                f"{m['bad_ranks']}); stopping (train.max_nonfinite={train.max_nonfinite}). The last complete "
                f"checkpoint is intact: lower train.lr, check the data, or resume with --resume auto.")
        if train.fault.step_delay_s:
            time.sleep(train.fault.step_delay_s)
        if m["stop"]:
            ctx.log.info(f"stop requested (signal): saving at step {state.step}")
            save_checkpoint(ctx, state)
            return "stopped"
        if evalc.every and state.step % evalc.every == 0 and state.step < train.steps:
            run_eval(ctx, state)
        if train.save_every and state.step % train.save_every == 0 and state.step < train.steps:
            save_checkpoint(ctx, state)
    save_checkpoint(ctx, state)
    ctx.log.info(_stage_summary(state))
    if evalc.at_end or evalc.every:
        run_eval(ctx, state)
    return "done"

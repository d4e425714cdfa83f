"""Setup of a training run, top to bottom: arguments -> config -> processes -> model and engine -> resume ->
data -> loop -> export. ``tools/train.py`` calls :func:`main`.

    deepspeed [--num_gpus N | --hostfile H] tools/train.py --config configs/X.yaml [--set key=value ...]
    python tools/train.py --config configs/X.yaml            # one process
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import warnings

from mmvit.config import apply_override, load_config
from mmvit.train import checkpoint as ckpt
from mmvit.train.config import parse
from mmvit.train.curriculum import build_curriculum, describe, loader_stage, plan
from mmvit.train.loop import Context, NonFiniteLossError, RunState, run_loop

EXIT_NONFINITE = 3


def parse_args(argv=None) -> argparse.Namespace:
    import deepspeed

    p = argparse.ArgumentParser(description="Train an mmvit model with DeepSpeed (see docs/training.md).")
    p.add_argument("--config", required=True, help="YAML config (configs/...)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. train.steps=100 deepspeed.zero_optimization.stage=2")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint of the run, else a fresh start) or a checkpoint folder "
                        "(.../checkpoints/global_stepN, or a universal one made by ds_to_universal)")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher (LOCAL_RANK wins)")
    p = deepspeed.add_config_arguments(p)  # --deepspeed, --deepspeed_config
    return p.parse_args(argv)


def read_config(args: argparse.Namespace):
    """The config with overrides; ``--deepspeed_config`` replaces the ``deepspeed:`` section (``--set
    deepspeed.*`` still applies on top)."""
    cfg = load_config(args.config, args.set)
    if args.deepspeed_config:
        with open(args.deepspeed_config) as f:
            holder = {"deepspeed": json.load(f)}
        for item in args.set:
            if item.lstrip("+").startswith("deepspeed."):
                apply_override(holder, item)
        cfg["deepspeed"] = holder["deepspeed"]
    if not cfg.get("run_dir"):
        name = cfg.get("name") or os.path.splitext(os.path.basename(args.config))[0]
        cfg["run_dir"] = os.path.join("runs", name)
    return cfg


class StopFlag:
    """SIGTERM or SIGINT asks for a checkpoint at the end of the current step; a second SIGINT (Ctrl-C twice)
    stops at once. Repeated SIGTERMs only repeat the request: DeepSpeed's launcher answers Ctrl-C by sending
    SIGTERM to ranks that already got the SIGINT."""

    def __init__(self):
        self.requested = False
        self.interrupts = 0
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt("second Ctrl-C: stopping without a checkpoint")

    def __call__(self) -> bool:
        return self.requested


def main(argv=None) -> int:
    args = parse_args(argv)
    # DeepSpeed 0.19.8's ZeRO calls a torch collective that torch 2.13 deprecates, once per step and rank.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    cfg = read_config(args)
    train, evalc, export = parse(cfg)

    # Processes, device and resume target (rank 0 decides, so all ranks load the same folder).
    import torch

    from mmvit.train import engine as ds
    from mmvit.train.data import build_loader
    from mmvit.train.ema import EMA
    from mmvit.train.export import export_weights
    from mmvit.train.metrics import RunLog

    rank, world_size, _ = ds.init_distributed(train.dist_timeout_min)
    run_dir = os.path.abspath(cfg["run_dir"])
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    resume = ds.all_gather_object(ckpt.resolve_resume(args.resume, ckpt_dir) if rank == 0 else None)[0]
    if resume is None and args.resume != "auto" and ckpt.complete_checkpoints(ckpt_dir):
        raise SystemExit(f"{run_dir} already has checkpoints: continue it with --resume auto, or choose another "
                         f"run_dir (--set run_dir=...)")
    if resume is not None and not ckpt.is_complete(resume) and not ds.is_universal(resume):
        raise SystemExit(f"--resume {resume}: no {ckpt.MARKER} marker, so the save was interrupted; resume from an "
                         f"older checkpoint (--resume auto picks the newest complete one)")

    # DeepSpeed config: universal checkpoints need checkpoint.load_universal, which we set when resuming one.
    ds_section = dict(cfg.get("deepspeed") or {})
    if resume is not None and ds.is_universal(resume):
        ds_section.setdefault("checkpoint", {})["load_universal"] = True
    elif (ds_section.get("checkpoint") or {}).get("load_universal"):
        raise SystemExit("deepspeed.checkpoint.load_universal is set but --resume does not name a universal "
                         "checkpoint folder (convert one with python -m deepspeed.checkpoint.ds_to_universal)")
    ds_config = ds.build_ds_config(ds_section, train)

    # Model and engine. Same seed on every rank for the initial weights (DeepSpeed also broadcasts rank 0's).
    import mmvit

    seed = int(cfg.get("seed", 0))
    ckpt.seed_all(seed)
    model = mmvit.build_model(cfg)
    if train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(ds.device())
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 shards them
    engine = ds.initialize(model, ds_config, train)
    if train.ema_decay is not None and ds.zero_stage(engine) == 3:
        raise SystemExit("train.ema_decay: the EMA keeps whole weights and does not work with ZeRO-3")
    ema = EMA(engine.module, train.ema_decay) if train.ema_decay is not None else None
    ckpt.seed_all(seed * 1000 + rank)  # per-rank randomness (drop-path) from here on

    # Resume: weights and optimizer through DeepSpeed, the rest from the client state.
    state, client = RunState(), {}
    if resume is not None:
        client = ds.load(engine, resume)
        state = RunState(**client["run_state"])
        if ema is not None and client.get("ema") is not None:
            ema.load_state_dict(client["ema"])
        rng, same_world = ckpt.pick_rank_state(client.get("rng"), rank, world_size)
        if same_world:
            ckpt.set_rng_state(rng)

    # Curriculum and data.
    data_cfg = cfg.to_dict()["data"]
    curriculum = build_curriculum(cfg.get("curriculum"), total_steps=train.steps, data_cfg=data_cfg)
    stage = curriculum(state.step)
    loader, control = build_loader(data_cfg, split="train", rank=rank, world_size=world_size, seed=seed,
                                   stage=loader_stage(stage), train=True)
    if client.get("data"):
        data_state, same_world = ckpt.pick_rank_state(client["data"], rank, world_size)
        control.load_state_dict(data_state)
    eval_loader = None
    if evalc.every or evalc.at_end:
        eval_loader, _ = build_loader(data_cfg, split=evalc.split, rank=rank, world_size=world_size,
                                      seed=seed, stage=None, train=False)

    log = RunLog(run_dir, rank=rank, start_step=state.step, total_steps=train.steps, progress=train.progress,
                 fresh=resume is None)
    if rank == 0:
        cfg.dump(os.path.join(run_dir, "config.yaml"))
        with open(os.path.join(run_dir, "schedule.json"), "w") as f:
            json.dump(plan(curriculum, train.steps), f)
    gas = engine.gradient_accumulation_steps()
    log.info(f"{world_size} rank(s) on {ds.device()}, ZeRO stage {ds.zero_stage(engine)}, {ds.compute_dtype(engine)}, "
             f"{gas} micro-batch(es) per rank per step, {n_params / 1e6:.2f}M parameters; run dir {run_dir}")
    if resume is not None:
        same = len(client.get("data") or []) == world_size
        log.info(f"resumed from {resume} at step {state.step}" +
                 ("" if same else f" (saved by {len(client.get('data') or [])} ranks: RNG states start afresh)"))
        log.record("event", state.step, event="resumed", path=resume, world_size=world_size)
    log.info(describe(curriculum, train.steps))

    ctx = Context(cfg=cfg, train=train, evalc=evalc, engine=engine, curriculum=curriculum, loader=loader,
                  control=control, eval_loader=eval_loader, ema=ema, log=log, rank=rank, world_size=world_size,
                  run_dir=run_dir, device=ds.device(), dtype=ds.compute_dtype(engine), stop_requested=StopFlag())
    try:
        outcome = run_loop(ctx, state)
        if outcome == "done" and export.enabled:
            paths = export_weights(ctx, state, export)
            log.info(f"exported {', '.join(paths)}")
        stats = control.stats()
        log.record("event", state.step, event=outcome, skipped_total=state.skipped,
                   data_stats={k: v for k, v in stats.items() if isinstance(v, (int, float))})
        log.info(f"{outcome} at step {state.step}; {state.skipped} step(s) skipped; data: {stats}")
        code = 0
    except NonFiniteLossError as e:
        log.record("event", state.step, event="aborted", reason=str(e))
        log.warning(f"ABORTED: {e}")
        code = EXIT_NONFINITE
    finally:
        log.close()
    if code == 0:
        ds.barrier()
    torch.distributed.destroy_process_group()
    return code

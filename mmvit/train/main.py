"""Setup of a training run, top to bottom: arguments -> config -> processes -> model and engine -> resume ->
data -> loop -> export. ``tools/train.py`` calls :func:`main`.

    deepspeed [--num_gpus N | --hostfile H] tools/train.py --config configs/X.yaml [--set key=value ...]
    python tools/train.py --config configs/X.yaml            # one process
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import warnings

from mmvit import checkpoint as ckpt
from mmvit.config import apply_override, load_config
from mmvit.train.config import parse

EXIT_NONFINITE = 3


def parse_args(argv=None) -> argparse.Namespace:
    from mmvit.train import engine

    p = argparse.ArgumentParser(description="Train an mmvit model with DeepSpeed (see docs/training.md).")
    p.add_argument("--config", required=True, help="YAML config (configs/...)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. train.steps=100 deepspeed.zero_optimization.stage=2")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint of the run, else a fresh start) or a checkpoint folder "
                        "(.../checkpoints/global_stepN, or a universal one made by ds_to_universal)")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher (LOCAL_RANK wins)")
    p = engine.add_arguments(p)  # --deepspeed, --deepspeed_config
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

    import mmvit
    from mmvit import dist
    from mmvit.config import Config
    from mmvit.data import build_loader, resolve_data_config
    from mmvit.data.classes import resolve_class_tables, task_configs, with_tables
    from mmvit.objectives import build_objective
    from mmvit.objectives.base import objective_type
    from mmvit.registry import OBJECTIVES
    from mmvit.pretrained import apply_init_from
    from mmvit.train import engine as ds
    from mmvit.train import rng
    from mmvit.train.curriculum import build_curriculum, describe, plan
    from mmvit.train.ema import EMA
    from mmvit.train.export import export_weights
    from mmvit.train import precision as prec
    from mmvit.train.faults import Faults
    from mmvit.train.loop import Context, NonFiniteLossError, RunState, run_loop
    from mmvit.train.runlog import RunLog

    # Processes, device and resume target (rank 0 decides, so all ranks load the same folder).
    rank, world_size, _ = ds.start(train.dist_timeout_min)
    run_dir = os.path.abspath(cfg["run_dir"])
    ckpt_dir = os.path.join(run_dir, ckpt.CHECKPOINTS_DIR)
    resume = dist.all_gather_object(ckpt.resolve_resume(args.resume, ckpt_dir) if rank == 0 else None)[0]
    if resume is None and args.resume != "auto" and ckpt.complete_checkpoints(ckpt_dir):
        raise SystemExit(f"{run_dir} already has checkpoints: continue it with --resume auto, or choose another "
                         f"run_dir (--set run_dir=...)")
    universal = resume is not None and ckpt.is_universal(resume)
    if resume is not None and not ckpt.is_complete(resume) and not universal:
        raise SystemExit(f"--resume {resume}: no {ckpt.MARKER} marker, so the save was interrupted; resume from an "
                         f"older checkpoint (--resume auto picks the newest complete one)")
    # Precision: train.precision (auto: from the hardware), or as the checkpoint being resumed was trained.
    saved = ckpt.marker_info(resume).get("precision") if resume is not None and not universal else None
    try:
        precision, precision_why = prec.resolve(train.precision, cfg.get("deepspeed") or {}, ds.device(), saved)
    except ValueError as e:
        raise SystemExit(f"precision: {e}") from None
    ds_config = ds.build_ds_config(cfg.get("deepspeed") or {}, train, universal=universal, precision=precision,
                                   device=ds.device())

    # Class tables (one per task, fixed before training from the config or the training split) size the heads;
    # the resolved config holds them, so every later reader (eval, export, predict) maps labels the same way.
    import mmvit.objectives  # noqa: F401  (registers the built-in objectives)

    tables = None
    if OBJECTIVES.get(objective_type(cfg.get("objective"))).uses_labels:
        tables = resolve_class_tables(cfg)
        cfg = Config(with_tables(cfg, tables))

    # Model, objective and engine. Same seed on every rank for the initial weights (DeepSpeed also
    # broadcasts rank 0's).
    seed = int(cfg.get("seed", 0))
    rng.seed_all(seed)
    model = mmvit.build_model(cfg)
    apply_init_from(model)
    if train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    weights = {t: spec.weight for t, spec in task_configs(cfg).items()}
    objective = build_objective(cfg.get("objective"), model, task_weights=weights).to(ds.device())
    n_params = sum(p.numel() for p in objective.parameters())  # before ZeRO-3 shards them
    engine = ds.Engine(objective, ds_config, train)
    if train.ema_decay is not None and engine.zero_stage == 3:
        raise SystemExit("train.ema_decay: the EMA keeps whole weights and does not work with ZeRO-3")
    ema = EMA(engine.module, train.ema_decay) if train.ema_decay is not None else None
    rng.seed_all(seed * 1000 + rank)  # per-rank randomness (drop-path) from here on

    # Resume: weights and optimizer through DeepSpeed, the rest from the client state.
    state, client = RunState(), {}
    if resume is not None:
        client = engine.load(resume)
        state = RunState(**client["run_state"])
        if ema is not None and client.get("ema") is not None:
            ema.load_state_dict(client["ema"])
        states, same_world = rng.pick_rank_state(client.get("rng"), rank, world_size)
        if same_world:
            rng.set_rng_state(states)

    # Curriculum and data.
    data_cfg = cfg.to_dict()["data"]
    if getattr(objective, "mask", None) is not None:  # masked pretraining: the loader workers plan the masks
        if data_cfg.get("mask") is not None:
            raise SystemExit("data.mask is set from objective.mask: give the mask there only")
        data_cfg["mask"] = dataclasses.asdict(objective.mask)
    curriculum = build_curriculum(cfg.get("curriculum"), total_steps=train.steps,
                                  data=resolve_data_config(data_cfg, "train"))
    loader, control = build_loader(data_cfg, split="train", rank=rank, world_size=world_size, seed=seed,
                                   stage=curriculum(state.step), train=True,
                                   tables=tables if tables is not None else resolve_class_tables(cfg))  # labels unused
    if client.get("data"):
        data_state, _ = rng.pick_rank_state(client["data"], rank, world_size)
        control.load_state_dict(data_state)

    log = RunLog(run_dir, rank=rank, start_step=state.step, total_steps=train.steps, progress=train.progress,
                 fresh=resume is None)
    if rank == 0:
        cfg.dump(os.path.join(run_dir, ckpt.CONFIG_NAME))
        if tables is not None:
            tables.save(os.path.join(run_dir, ckpt.CLASSES_NAME))
        with open(os.path.join(run_dir, "schedule.json"), "w") as f:
            json.dump(plan(curriculum, train.steps), f)
    log.info(f"{world_size} rank(s) on {ds.device()}, ZeRO stage {engine.zero_stage}, {engine.precision} "
             f"({precision_why}), "
             f"{engine.micro_batches} micro-batch(es) per rank per step, {n_params / 1e6:.2f}M parameters; "
             f"run dir {run_dir}")
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        log.info(report.summary())
    for t, table in (tables or {}).items():
        log.info(f"task {t!r}: {len(table)} classes ({table.origin})")
    if resume is not None:
        saved = len(client.get("data") or [])
        log.info(f"resumed from {resume} at step {state.step}" +
                 ("" if saved == world_size else f" (saved by {saved} ranks: RNG states and the data order start "
                                                 f"afresh)"))
        log.record("event", state.step, event="resumed", path=resume, world_size=world_size)
    log.info(describe(curriculum, train.steps))

    ctx = Context(cfg=cfg, train=train, evalc=evalc, engine=engine, curriculum=curriculum, loader=loader,
                  control=control, ema=ema, log=log, faults=Faults(train.faults, rank), rank=rank,
                  world_size=world_size, run_dir=run_dir, device=ds.device(), seed=seed, stop_requested=StopFlag(),
                  classes=None if tables is None else tables.to_json(), tables=tables)
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
        dist.barrier()
    ds.stop()
    return code

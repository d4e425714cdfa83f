"""Reproducibility: two 2-rank runs with ``train.deterministic: true`` (images and clips packed together,
loader workers, a curriculum stage change, accumulation) agree bit for bit in every step's metrics and in
the final weights; and the curriculum stage of a batch depends on its index only, however far the loader
workers have run ahead.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import mmvit
from mmvit.data import build_loader
from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
CONFIG = os.path.join(ROOT, "configs", "tests", "tiny_train.yaml")
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"):
        env.pop(key, None)  # the run picks its threads itself (train.threads default)
    return env


def _train_records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.mark.slow
def test_two_deterministic_runs_are_identical(tmp_path):
    dirs = []
    for name in ("a", "b"):
        run_dir = str(tmp_path / name)
        cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, "--config", CONFIG,
               "--set", f"run_dir={run_dir}", "train.deterministic=true", "data.num_workers=2", "eval.every=0",
               "eval.at_end=false", "train.progress=false", "train.save_every=0"]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-6000:]
        assert "deterministic algorithms" in proc.stdout
        dirs.append(run_dir)
    a, b = (_train_records(d) for d in dirs)
    assert len(a) == len(b) == 8
    assert all(r["videos"] > 0 and r["images"] > 0 for r in a)
    timing = {"time", "examples_per_s", "tokens_per_s", "step_time"}
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in timing} == {k: v for k, v in rb.items() if k not in timing}
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = (load_file(os.path.join(d, name)) for d in dirs)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


def _stage(side):
    return {"resolution": {"type": "fixed", "values": [side]}, "frames": 2}


@pytest.mark.parametrize("consumer_delay_s", [0.0, 0.3])
def test_announced_stage_of_a_batch_depends_on_its_index_only(consumer_delay_s):
    """A slow consumer lets both workers fill their prefetch queues with later batches; the stage change
    announced for batch 5 still lands on batch 5 exactly (patch counts of a fixed side tell the stages
    apart)."""
    data = mmvit.load_config(CONFIG).to_dict()["data"]
    data.update(num_workers=2, prefetch_factor=2)
    loader, control = build_loader(data, split="train", rank=0, world_size=1, seed=0, train=True)
    assert control.max_ahead == 4
    assert control.announce([(0, _stage(16)), (5, _stage(32))])
    ids = {e[0]: e[1] for e in control.history}
    got = []
    try:
        it = iter(loader)
        for _ in range(10):
            got.append(next(it))
            time.sleep(consumer_delay_s)
    finally:
        loader.shutdown()
    assert [b.index for b in got] == list(range(10))
    assert [b.stage_id for b in got] == [ids[0]] * 5 + [ids[5]] * 5
    # 8 px patches per frame: at most (16/8)^2 = 4 at a side of 16 px (aspect ratios vary), at least 9 at 32.
    small = [max(int(g[1] * g[2]) for g in b.grid[: b.num_examples]) <= 4 for b in got]
    large = [min(int(g[1] * g[2]) for g in b.grid[: b.num_examples]) >= 9 for b in got]
    assert small == [True] * 5 + [False] * 5 and large == [False] * 5 + [True] * 5


def test_a_late_announcement_is_reported_and_applies_from_the_next_unstarted_batch():
    data = mmvit.load_config(CONFIG).to_dict()["data"]
    data.update(num_workers=0)
    loader, control = build_loader(data, split="train", rank=0, world_size=1, seed=0, train=True)
    assert control.announce([(0, _stage(16))])
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert control.announce([(3, _stage(16)), (4, _stage(32))])  # on time: batch 3 is not started
    assert control.announce([(3, _stage(16)), (4, _stage(32))])  # again: a no-op, same ids
    before = [list(e) for e in control.history]
    assert not control.announce([(1, _stage(32))])  # batches 1, 2 were built with 16 px
    assert control.history != before
    b = next(it)
    assert b.index == 3 and min(int(g[1] * g[2]) for g in b.grid[: b.num_examples]) >= 9


class _Log:
    def __init__(self):
        self.warnings = []

    def warning(self, msg):
        self.warnings.append(msg)


def test_a_renamed_stage_of_the_same_shape_is_announced_before_the_workers_reach_it():
    """Multigrid under ``min_frames`` gives consecutive stages of one shape and two names. With the workers
    as far ahead as the DataLoader lets them at every step, each step's announcement is on time and the
    renamed stage starts at its own step's batch, whatever the timing."""
    from types import SimpleNamespace

    from mmvit.data.stage import make_stage
    from mmvit.train.loop import announce_stages

    data = mmvit.load_config(CONFIG).to_dict()["data"]
    data.update(num_workers=2, prefetch_factor=2)
    _, control = build_loader(data, split="train", rank=0, world_size=1, seed=0, train=True)
    cfg = control.cfg
    a, b = make_stage(cfg, {**_stage(16), "name": "a"}), make_stage(cfg, {**_stage(16), "name": "b"})
    shape = lambda s: (s.resolution, s.frames, s.patch_size, s.token_budget)   # noqa: E731
    assert shape(a) == shape(b) and a.to_dict() != b.to_dict()           # one shape, two names
    log = _Log()
    ctx = SimpleNamespace(engine=SimpleNamespace(micro_batches=1), control=control, log=log,
                          train=SimpleNamespace(steps=12), curriculum=lambda k: a if k < 6 else b)
    for step in range(12):
        control.g = step                                       # batches handed out before this step's
        announce_stages(ctx, step)
        with control.shared.lock:                              # the workers start all they are asked for
            control.shared.max_started.value = step + control.max_ahead - 1
        assert control._spec_at(step) == (a if step < 6 else b).to_dict(), step
    assert log.warnings == []

"""Real DeepSpeed runs of configs/tests/tiny_train.yaml on CPU (gloo): a 2-rank run with images and clips in
the same packs, a curriculum stage change, 2 accumulation steps and a NaN injected on rank 0 only; its
gradient against a one-process reference; a 2 -> 1 rank resume through DeepSpeed's universal checkpoint; a
SIGTERM stop and a ``--resume auto`` past an interrupted save; the abort after K non-finite steps in a row.

The data is the synthetic source read by the real loader: deterministic for a given seed, world size and
worker count, so a resumed run must reproduce the uninterrupted run's losses on the same world size. About 2 minutes on 2 cores (plus ~1 min once to compile DeepSpeed's
shared-memory comm op into ~/.cache/torch_extensions).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import mmvit
from mmvit.checkpoint import MARKER
from mmvit.data import build_loader, resolve_data_config
from mmvit.objectives.classification import example_losses
from mmvit.train.curriculum import build_curriculum
from mmvit.train.engine import SHM_DIR
from mmvit.train.loss import example_weights, local_count, normalised_loss
from mmvit.train.rng import seed_all
from tests.conftest import free_port, launch_env

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
CONFIG = os.path.join(ROOT, "configs", "tests", "tiny_train.yaml")
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")
TIMEOUT = 900  # a cold CI cache first compiles DeepSpeed's comm op




def _overrides(run_dir, *extra, progress=False):
    return ["--set", f"run_dir={run_dir}", f"train.progress={str(progress).lower()}", "train.faults.nan_steps=[2]",
            *extra]


def _check(proc: subprocess.CompletedProcess, code: int = 0):
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-6000:]}"


def _run(cmd, timeout) -> subprocess.CompletedProcess:
    """Run with a timeout (nothing may hang CI), stderr folded into stdout."""
    return subprocess.run(cmd, check=False, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def _python(run_dir, *extra, resume=None, timeout=TIMEOUT):
    cmd = [sys.executable, TRAIN, "--config", CONFIG, *_overrides(run_dir, *extra)]
    cmd += ["--resume", resume] if resume else []
    return _run(cmd, timeout)


def _records(run_dir, kind="train"):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in _records(run_dir)}


def _assert_same_losses(ref, got, steps):
    for s in steps:
        if ref[s] != ref[s]:  # the injected NaN step
            assert got[s] != got[s]
        else:
            assert got[s] == pytest.approx(ref[s], rel=1e-5, abs=1e-6), f"step {s}"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("two_rank") / "run")
    grads = os.path.join(os.path.dirname(run_dir), "grads.pt")
    port = free_port()
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), TRAIN, "--config", CONFIG,
           *_overrides(run_dir, f"train.faults.grad_dump={grads}", progress=True)]
    t0 = time.time()
    proc = _run(cmd, TIMEOUT)
    _check(proc)
    return {"dir": run_dir, "grads": grads, "seconds": time.time() - t0, "stdout": proc.stdout, "port": port}


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory):
    """The same config in one process, uninterrupted: the reference of the one-process resumes."""
    run_dir = str(tmp_path_factory.mktemp("one_rank") / "run")
    _check(_python(run_dir))
    return {"dir": run_dir}


@pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm on this system")
def test_two_rank_run_leaves_no_shared_memory(two_rank_run):
    """DeepSpeed's CPU all-reduce buffers (one ~69 MB object per rank in /dev/shm, named after the group's
    address and port) are unlinked by the run itself: none of its port is left once it has ended."""
    # The run did use the shared-memory all-reduce (DeepSpeed prints this when it loads the op).
    assert "shm_comm" in two_rank_run["stdout"] and "built successfully" in two_rank_run["stdout"]
    # The name as DeepSpeed's shm.cpp writes it, not mmvit's constant: a wrong prefix there must fail here.
    left = [f for f in os.listdir(SHM_DIR) if f.startswith("deepspeed_allreduce_buffer_")
            and f"_{two_rank_run['port']}_" in f]
    assert left == []


def test_two_rank_run_packs_curriculum_nan_skip_eval_export(two_rank_run):
    run_dir = two_rank_run["dir"]
    train = _records(run_dir)
    assert [r["step"] for r in train] == list(range(8))
    # Images and clips share every step's packs.
    assert all(r["videos"] > 0 and r["images"] > 0 for r in train)
    # The NaN injected on rank 0 at step 2 skipped the step on both ranks; the run went on.
    assert [r["step"] for r in train if r["skipped"]] == [2]
    assert all(r["loss"] == r["loss"] for r in train if not r["skipped"])
    assert "[rank 1] WARNING: step 2 skipped (non-finite loss on ranks [0])" in two_rank_run["stdout"]
    assert "ex_s=" in two_rank_run["stdout"] and "stage=full" in two_rank_run["stdout"]  # rank 0's tqdm bar
    # The stage change at step 4 reached the loader: coarse steps hold several times more examples.
    stages = _records(run_dir, "stage")
    assert [(s["step"], s["name"]) for s in stages] == [(0, "coarse"), (4, "full")]
    coarse = sum(r["examples"] for r in train[:4]) / 4
    full = sum(r["examples"] for r in train[4:]) / 4
    assert coarse > 3 * full
    assert train[0]["lr_scale"] > 1.0 and train[5]["lr_scale"] == 1.0  # lr_scaling: sqrt
    assert train[-1]["loss"] < train[0]["loss"]
    evals = _records(run_dir, "eval")
    assert [e["step"] for e in evals] == [4, 8]
    assert all(0.0 <= e["top1"] <= e["top5"] <= 1.0 and "ema_top1" in e for e in evals)
    # Complete checkpoints every 3 steps and at the end; the exported model rebuilds from its config alone.
    for step in (3, 6, 8):
        assert os.path.isfile(os.path.join(run_dir, "checkpoints", f"global_step{step}", MARKER))
    cfg = mmvit.load_config(os.path.join(run_dir, "config.yaml"))
    for name in ("model.safetensors", "model_ema.safetensors"):
        model = mmvit.build_model(cfg, weights=os.path.join(run_dir, name)).eval()
        data = cfg.to_dict()["data"]
        val, _ = build_loader(data, split="val", rank=0, world_size=1, seed=0, train=False)
        batch = next(iter(val))
        assert model(batch).shape == (batch.num_examples, 10)
    assert os.listdir(os.path.join(run_dir, "tb"))


def test_gradient_is_the_global_mean_over_ranks_and_micro_batches(two_rank_run):
    """The gradient DeepSpeed applies (2 ranks x 2 micro-batches) equals one process's gradient of the mean
    loss over all examples of the step."""
    cfg = mmvit.load_config(CONFIG)
    seed_all(0)
    model = mmvit.build_model(cfg)
    data = cfg.to_dict()["data"]
    stage = build_curriculum(cfg.get("curriculum"), total_steps=8, data=resolve_data_config(data, "train"))(0)
    batches = []  # the 2 micro-batches of each rank at step 0
    for rank in (0, 1):
        loader, _ = build_loader(data, split="train", rank=rank, world_size=2, seed=0, stage=stage, train=True)
        it = iter(loader)
        batches += [next(it) for _ in range(2)]
    count = local_count([example_weights(b, "examples") for b in batches])
    sum(normalised_loss(example_losses(model(b), b.labels), example_weights(b, "examples"), count)
        for b in batches).backward()
    dumped = torch.load(two_rank_run["grads"], weights_only=True)
    assert dumped["global_count"] == count
    for name, p in model.named_parameters():
        ref, got = p.grad, dumped["grads"]["model." + name]  # the classification objective holds the model
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-7 * ref.abs().max()), name


def test_plot_run_draws_every_figure(two_rank_run, tmp_path):
    proc = _run([sys.executable, os.path.join(ROOT, "tools", "plot_run.py"), two_rank_run["dir"], "--out",
                 str(tmp_path)], 120)
    _check(proc)
    for name in ("loss", "accuracy", "throughput", "curriculum"):
        assert os.path.getsize(tmp_path / f"{name}.png") > 1000


def test_universal_checkpoint_resumes_two_ranks_on_one(two_rank_run, tmp_path):
    """A 2-rank checkpoint converted by DeepSpeed's ds_to_universal resumes on one rank with exactly the saved
    weights, and trains on (the data order restarts on another world size: the loader's state is per rank)."""
    from safetensors.torch import load_file

    from mmvit.export import export

    src = os.path.join(two_rank_run["dir"], "checkpoints", "global_step6")
    uni = str(tmp_path / "global_step6_universal")
    conv = _run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", src,
                 "--output_folder", uni, "--num_extract_workers", "1", "--num_merge_workers", "1"], 300)
    _check(conv)
    at_resume = str(tmp_path / "at_resume")
    proc = _python(at_resume, "train.steps=6", "eval.at_end=false", resume=uni)  # loads, trains nothing, exports
    _check(proc)
    assert "resumed from" in proc.stdout and "at step 6" in proc.stdout and "start afresh" in proc.stdout
    saved = load_file(export(src, str(tmp_path / "saved")).weights)
    loaded = load_file(os.path.join(at_resume, "model.safetensors"))
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    run_dir = str(tmp_path / "one_rank")
    _check(_python(run_dir, "eval.at_end=false", "eval.every=0", resume=uni))
    got = _losses(run_dir)
    assert sorted(got) == [6, 7] and all(v == v for v in got.values())


def test_sigterm_saves_and_resume_auto_skips_an_interrupted_save(one_rank_run, tmp_path):
    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, TRAIN, "--config", CONFIG, *_overrides(run_dir, "train.faults.step_delay_s=0.5",
                                                                  "train.save_every=0")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(metrics) and len(_records(run_dir)) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "stop requested (signal: SIGTERM)" in out
    stopped = max(r["step"] for r in _records(run_dir)) + 1
    assert 3 <= stopped < 8
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    assert os.path.isfile(os.path.join(ckpt_dir, f"global_step{stopped}", MARKER))
    # A later save cut short by kill -9: files but no marker, and DeepSpeed's "latest" pointing at it.
    broken = os.path.join(ckpt_dir, f"global_step{stopped + 1}")
    shutil.copytree(os.path.join(ckpt_dir, f"global_step{stopped}"), broken)
    os.remove(os.path.join(broken, MARKER))
    with open(os.path.join(ckpt_dir, "latest"), "w") as f:
        f.write(os.path.basename(broken))
    resumed = _python(run_dir, resume="auto")
    _check(resumed)
    assert f"global_step{stopped} at step {stopped}" in resumed.stdout
    got = _losses(run_dir)
    assert sorted(got) == list(range(8))
    _assert_same_losses(_losses(one_rank_run["dir"]), got, range(8))


def test_consecutive_nonfinite_steps_abort_with_a_clear_message(tmp_path):
    proc = _python(str(tmp_path / "run"), "train.faults.nan_steps=[0,1]", "train.max_nonfinite=2", "train.steps=4",
                   "eval.at_end=false", "eval.every=0")
    _check(proc, code=3)
    assert "ABORTED: 2 steps in a row were skipped" in proc.stdout
    assert "train.max_nonfinite=2" in proc.stdout

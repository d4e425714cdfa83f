"""Preemption: a stop signal to a whole run (launcher, ranks and loader workers, as SLURM and ``timeout``
send it) under the ``deepspeed`` launcher, torchrun and a plain one-process start leaves a complete
checkpoint at the step where the ranks stopped, every rank exits 0, and ``--resume auto`` ends with exactly
the weights and losses of a run that was never stopped. Plus the stop flag's own rules (in-process) and the
watchdog's bound (a subprocess); and two weak points: a non-finite step skipped (not aborted) in fp32
without ZeRO, and a ZeRO-3 evaluation where one rank has no batch.

configs/tests/tiny_train.yaml with 2 loader workers per rank; each real run takes ~20-40 s on 2 cores.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from mmvit.checkpoint import MARKER
from mmvit.train.preempt import EXIT_STOP_TIMEOUT, Stopper
from tests.conftest import free_port, launch_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
CONFIG = os.path.join(ROOT, "configs", "tests", "tiny_train.yaml")
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")
TIMEOUT = 900
STEPS = 8
# Workers that outlive a stop would be killed by the group signal; eval off to keep the runs short.
COMMON = ["data.num_workers=2", "train.threads=1", f"train.steps={STEPS}", "train.save_every=0",
          "train.keep_checkpoints=0", "eval.every=0", "eval.at_end=false", "train.progress=false"]




def _launch(kind: str) -> list[str]:
    if kind == "deepspeed":
        return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), TRAIN]
    if kind == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1", TRAIN]
    return [sys.executable, TRAIN]


def _cmd(kind, run_dir, *extra, resume=None):
    cmd = _launch(kind) + ["--config", CONFIG, "--set", f"run_dir={run_dir}", *COMMON, *extra]
    return cmd + (["--resume", resume] if resume else [])


def _run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _records(run_dir, kind="train"):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_mid_run(cmd, run_dir, sig, log_path):
    """Start ``cmd`` in its own session, send ``sig`` to its whole process group once two steps are logged,
    wait until every process of the group is gone; returns (exit code of cmd's process, its output)."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pgid = proc.pid
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None and len(_records(run_dir)) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, open(log_path).read()[-4000:]
        os.killpg(pgid, sig)
        code = proc.wait(timeout=300)
        while _group_alive(pgid) and time.time() < deadline:  # launch.py, the ranks and their workers
            time.sleep(0.2)
        assert not _group_alive(pgid)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    with open(log_path) as f:
        return code, f.read()


def _check_stopped(run_dir, output, ranks):
    assert "DataLoader worker" not in output, output[-6000:]
    # The one traceback allowed: torchrun's agent re-raising the signal it forwarded (its design).
    assert output.count("Traceback") == output.count("multiprocessing.api.SignalException: Process"), output[-6000:]
    assert "stop requested (signal" in output, output[-6000:]
    stops = [r for r in _records(run_dir, "event") if r.get("event") == "stopped"]
    assert len(stops) == 1, output[-4000:]
    stopped = stops[0]["step"]
    assert 2 <= stopped < STEPS
    for rank in range(1, ranks):
        assert f"[rank {rank}] WARNING: stopped at step {stopped}" in output and "exiting 0" in output
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    assert [n for n in os.listdir(ckpt_dir) if n.startswith("global_step")] == [f"global_step{stopped}"]
    assert os.path.isfile(os.path.join(ckpt_dir, f"global_step{stopped}", MARKER))
    return stopped


def _assert_same_run(ref_dir, run_dir):
    ref, got = load_file(os.path.join(ref_dir, "model.safetensors")), load_file(os.path.join(run_dir,
                                                                                        "model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    ref_loss = {r["step"]: r["loss"] for r in _records(ref_dir)}
    got_loss = {r["step"]: r["loss"] for r in _records(run_dir)}
    assert sorted(got_loss) == list(range(STEPS)) and got_loss == ref_loss


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-rank run."""
    run_dir = str(tmp_path_factory.mktemp("ref") / "run")
    _run(_cmd("deepspeed", run_dir))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_sigterm_to_the_process_group_stops_saves_and_resumes_exactly(launcher, reference, tmp_path):
    run_dir = str(tmp_path / "run")
    code, out = _stop_mid_run(_cmd(launcher, run_dir, "train.faults.step_delay_s=0.5"), run_dir, signal.SIGTERM,
                              str(tmp_path / "stop.log"))
    # The launchers' own exit code after a signal is not the ranks': deepspeed's launch.py exits 1 from its
    # signal handler, its runner dies of the SIGTERM; torchrun re-raises the signal as an error.
    assert code != 0
    stopped = _check_stopped(run_dir, out, ranks=2)
    resumed = _run(_cmd(launcher, run_dir, resume="auto"))
    assert f"at step {stopped}" in resumed
    _assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_sigusr1_to_one_process_run_exits_0_with_a_checkpoint(tmp_path):
    """``srun python tools/train.py``: each rank is its own launch; SIGUSR1 (``#SBATCH --signal``) to the
    rank and its workers."""
    run_dir = str(tmp_path / "run")
    code, out = _stop_mid_run(_cmd("python", run_dir, "train.faults.step_delay_s=0.5"), run_dir, signal.SIGUSR1,
                              str(tmp_path / "stop.log"))
    assert code == 0, out[-4000:]
    _check_stopped(run_dir, out, ranks=1)
    assert "stop requested (signal: SIGUSR1)" in out


@pytest.mark.slow
def test_nonfinite_loss_in_fp32_without_zero_skips_the_step(tmp_path):
    """ZeRO-0 fp32 has no overflow check in DeepSpeed: the step is dropped by clearing the gradients, so
    the weights after the NaN step equal those before it (and a normal step does change them)."""
    run_dir = str(tmp_path / "run")
    out = _run(_cmd("python", run_dir, "train.steps=3", "train.save_every=1", "train.faults.nan_steps=[2]",
                    "deepspeed.zero_optimization.stage=0", "train.precision=fp32", "data.num_workers=0"))
    assert "step 2 skipped (non-finite loss on ranks [0])" in out
    assert [r["step"] for r in _records(run_dir) if r["skipped"]] == [2]

    def weights(step):
        path = os.path.join(run_dir, "checkpoints", f"global_step{step}", "mp_rank_00_model_states.pt")
        return torch.load(path, map_location="cpu", weights_only=False)["module"]

    w1, w2, w3 = weights(1), weights(2), weights(3)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for k in w2:
        assert torch.equal(w2[k], w3[k]), k


# -- the stop flag itself (no training) ----------------------------------------------------------------------

def test_signals_request_a_stop_and_a_second_sigint_only_outside_a_save():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        stopper = Stopper(timeout_s=600)
        assert not stopper()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper() and stopper.received == ["SIGUSR1", "SIGTERM"]
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C only asks
        with stopper.saving():
            os.kill(os.getpid(), signal.SIGINT)  # during a save: counted, the save goes on
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs between bytecodes
        stopper.finish()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_watchdog_exits_nonzero_when_the_stop_takes_too_long(tmp_path):
    script = textwrap.dedent("""
        import os, signal, time
        from mmvit.train.preempt import Stopper
        stopper = Stopper(timeout_s=1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # a save that never finishes
    """)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT_STOP_TIMEOUT, proc.stderr
    assert time.time() - t0 < 30
    assert "train.stop_timeout_s=1s" in proc.stderr


def test_loader_workers_ignore_the_stop_signals(tmp_path):
    """A worker-side SIGTERM (the whole group) does not kill the loader."""
    script = textwrap.dedent("""
        import os, signal
        import mmvit
        from mmvit.data import build_loader
        cfg = mmvit.load_config(%r).to_dict()["data"]
        cfg["num_workers"] = 2
        loader, _ = build_loader(cfg, split="train", rank=0, world_size=1, seed=0, train=True)
        it = iter(loader)
        next(it)
        for w in loader._live._workers:
            os.kill(w.pid, signal.SIGTERM)
        n = sum(1 for _, b in zip(range(6), it))
        loader.shutdown()
        print("batches", n)
    """ % CONFIG)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batches 6" in proc.stdout


@pytest.mark.slow
def test_zero3_evaluation_with_a_rank_without_eval_batches_finishes(tmp_path):
    """ZeRO-3's forward gathers parameters from every rank: a rank with no evaluation batch must still join
    each forward (lockstep with a dummy batch), else both ranks hang. One validation clip: rank 1 has none."""
    run_dir = str(tmp_path / "run")
    val = ("data.splits.val.sources=[{type: synthetic, num_samples: 1, num_classes: 10, video_fraction: 1.0, "
           "frames: [4, 6], seed: 1}]")
    proc = subprocess.run(_cmd("deepspeed", run_dir, "train.steps=2", "eval.every=1", "eval.at_end=true", "eval.images=false",
                               "deepspeed.zero_optimization.stage=3", "train.ema_decay=null", val),
                          cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, check=False)  # a hang fails here
    assert proc.returncode == 0, proc.stdout[-6000:]
    evals = _records(run_dir, "eval")
    assert [e["step"] for e in evals] == [1, 2]
    assert all(e["count"] == 1 for e in evals)

"""The first-run check of mmvit's GPU path, behind tools/gpu_check.sh (docs/benchmarks.md, GPU section).

Standard library only: it may run before anything is installed, and every part runs in its own process
under a time limit, so that a crash, hang or missing package in one part is reported and the rest goes on.

    tools/gpu_check.sh [--out DIR] [--wheels DIR [--venv PATH | --here]] [--parts tests,train,bench]
                       [--budget 480] [--dry-run] [--strict]
    tools/gpu_check.sh --prepare DIR --python 3.12 [--torch 2.11] [--glibc 2.28] [--xformers auto|none|VER]

Parts, in at most ``--budget`` seconds together (8 minutes by default):

- ``env``: the Python, torch (version, CUDA build, device), the other packages, ``python -m xformers.info``.
- ``tests``: ``python -m mmvit.bench.gpu_check``: every attention backend against float64 dense in bf16 on
  packed image + video batches, logits and gradients; the isolation invariant on the device.
- ``train``: configs/tests/tiny_train.yaml for 50 steps on one GPU, bf16, ZeRO-2, through DeepSpeed's
  launcher, checkpoints at steps 25 and 50; then the step-50 checkpoint is removed and ``--resume auto``
  must continue from step 25 and finish all 50 steps with a finite loss.
- ``bench``: ``python tools/benchmark.py gpu`` (attention backends; ViT-B/16 step MFU).

It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``. A part that cannot run here (no CUDA, no usable
xformers, no deepspeed) is skipped with its reason. Exit status: 0 when everything that ran passed (with
``--strict``: and nothing was skipped), 1 otherwise, 2 for bad usage or an environment without torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_wheels  # noqa: E402  tools/gpu_wheels.py, standard library only

ROOT = gpu_wheels.ROOT
PARTS = ("tests", "train", "bench")
BUDGET = {"env": 45, "tests": 150, "train": 120, "bench": 165}  # seconds; the total is capped by --budget
TRAIN_STEPS, SAVE_EVERY = 50, 25

ENV_PROBE = r"""
import importlib.metadata as md, json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable, "packages": {}}
for name in ("torch", "deepspeed", "xformers", "numpy", "einops", "pyyaml", "safetensors", "tqdm", "pillow",
             "av", "decord", "webdataset", "mmvit"):
    try:
        out["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["packages"][name] = None
try:
    import torch
    out["torch"] = {"version": torch.__version__, "file": torch.__file__, "cuda_build": torch.version.cuda,
                    "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["torch"].update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30),
                            devices=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
except Exception as e:
    out["torch"] = {"error": f"{type(e).__name__}: {e}"}
for mod in ("deepspeed", "xformers.ops"):
    try:
        __import__(mod)
        out[mod + "_import"] = None
    except Exception as e:
        out[mod + "_import"] = f"{type(e).__name__}: {e}"
try:
    import mmvit
    out["mmvit_file"] = mmvit.__file__
except Exception as e:
    out["mmvit_file"] = f"import failed: {type(e).__name__}: {e}"
print(json.dumps(out))
"""

XFORMERS_PROBE = r"""
import json
from mmvit.models import xformers_ops
print(json.dumps({"xformers": xformers_ops.kernels_usable("cuda")}))
"""


class Runner:
    """Runs commands as subprocesses under the remaining budget and keeps their logs."""

    def __init__(self, python: str, out: str, budget: float, dry_run: bool):
        self.python, self.out, self.dry_run = python, out, dry_run
        self.deadline = time.monotonic() + budget
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        PYTHONUNBUFFERED="1")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            self.env.pop(key, None)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], log_name: str, limit: float, env: dict | None = None) -> dict:
        """Run ``cmd`` for at most ``min(limit, budget left)`` s; {rc, seconds, log, tail, timed_out}."""
        limit = max(1.0, min(limit, self.left()))
        log_path = os.path.join(self.out, "logs", log_name)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its ranks share this session
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
        with open(log_path, errors="replace") as f:
            tail = f.read()[-4000:]
        out = {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "log": os.path.relpath(log_path, self.out),
               "tail": tail, "timed_out": timed_out, "limit_s": round(limit)}
        if timed_out:
            out["stale_locks"] = stale_locks(time.time() - out["seconds"])
        return out


def stale_locks(since: float) -> list[str]:
    """torch's JIT extension builds (DeepSpeed ops) hold a ``lock`` file while compiling; a process killed then
    leaves it, and every later build of that op waits for it forever. Lists those created since ``since``."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                   "torch_extensions")
    found = []
    for dirpath, _, files in os.walk(root):
        if "lock" in files and os.path.getmtime(os.path.join(dirpath, "lock")) >= since:
            found.append(os.path.join(dirpath, "lock"))
    return found


def _why(res: dict) -> str:
    if not res["timed_out"]:
        return f"exit {res['rc']}"
    locks = res.get("stale_locks")
    return f"timed out after {res['limit_s']} s" + (
        f" while a torch extension build held {', '.join(locks)}: delete it if no build runs, later builds wait "
        "on it" if locks else "")


def _remove(*paths: str) -> None:
    """Results of an earlier run in the same folder must not pass for this run's."""
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def part(name: str, status: str, detail: str, **extra) -> dict:
    return {"part": name, "status": status, "detail": detail, **extra}


# -- env --------------------------------------------------------------------------------------------------

def check_env(r: Runner) -> dict:
    res = r.run([r.python, "-c", ENV_PROBE], "env.log", BUDGET["env"])
    lines = [ln for ln in res["tail"].splitlines() if ln.startswith("{")]
    if res["rc"] != 0 or not lines:
        return part("env", "fail", f"{r.python} could not report its environment (exit {res['rc']})", run=res)
    env = json.loads(lines[-1])
    out = part("env", "pass", "", env=env)
    torch_info = env.get("torch", {})
    if "error" in torch_info:
        out.update(status="fail", detail=f"torch does not import in {r.python}: {torch_info['error']}")
        return out
    if not torch_info.get("cuda_available"):
        out["no_cuda"] = (f"no CUDA device: torch {torch_info['version']} (CUDA build {torch_info['cuda_build']}) "
                          f"in {r.python} sees none")
    if env["packages"].get("xformers") and not out.get("no_cuda") and not r.dry_run:
        info = r.run([r.python, "-m", "xformers.info"], "xformers_info.log", 40)
        out["xformers_info"] = info["tail"][-3000:]
        probe = r.run([r.python, "-c", XFORMERS_PROBE], "xformers_probe.log", 60)
        lines = [ln for ln in probe["tail"].splitlines() if ln.startswith("{")]
        out["xformers_kernels"] = (json.loads(lines[-1])["xformers"] if lines
                                   else f"probe failed: {probe['tail'][-500:]}")
    elif not env["packages"].get("xformers"):
        out["xformers_kernels"] = "xformers is not installed"
    t = torch_info
    out["detail"] = (f"Python {env['python']}, torch {t['version']} (CUDA build {t['cuda_build']}), "
                     + (f"{t['device']} (sm {t['capability']}, {t['memory_gib']} GiB, bf16 {t['bf16']})"
                        if t.get("cuda_available") else "no CUDA device")
                     + f"; deepspeed {env['packages']['deepspeed']}, xformers {env['packages']['xformers']}")
    return out


# -- tests ------------------------------------------------------------------------------------------------

def check_tests(r: Runner, env: dict) -> dict:
    report_path = os.path.join(r.out, "cuda_tests.json")
    cmd = [r.python, "-m", "mmvit.bench.gpu_check", "--out", report_path]
    if env.get("no_cuda"):
        return part("tests", "skip", env["no_cuda"], command=cmd)
    if r.dry_run:
        return part("tests", "skip", "dry run", command=cmd)
    _remove(report_path)
    res = r.run(cmd, "cuda_tests.log", BUDGET["tests"])
    if not os.path.isfile(report_path):
        why = _why(res)
        return part("tests", "fail", f"no report ({why}); see {res['log']}", command=cmd, run=res)
    with open(report_path) as f:
        rep = json.load(f)
    checks = rep.get("checks", [])
    failed = [c for c in checks if c["status"] == "fail"]
    skipped = [c for c in checks if c["status"] == "skip"]
    status = "fail" if failed or res["rc"] != 0 else "pass"
    passed = sum(c["status"] == "pass" for c in checks)
    detail = (("" if res["rc"] == 0 else f"incomplete ({_why(res)}); ")
              + f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped"
              + "".join(f"; FAILED {c['name']}: {c['detail'][:300]}" for c in failed)
              + "".join(f"; skipped {c['name']}: {c['detail'][:200]}" for c in skipped))
    return part("tests", status, detail, command=cmd, run=res, checks=checks)


# -- train ------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_commands(r: Runner, run_dir: str, attention: str, steps: int, save_every: int
                   ) -> tuple[list[str], list[str], dict]:
    """The first run, the resumed run (same command plus ``--resume auto``) and their environment.

    bf16 and ZeRO-2 are DeepSpeed's ``bf16.enabled`` and ``zero_optimization.stage`` (DeepSpeed 0.19.8,
    deepspeed/runtime/constants.py). DeepSpeed's launcher replaces CUDA_VISIBLE_DEVICES with ``0`` when given
    ``--num_gpus``, which on a cluster node may be another job's GPU; where the scheduler set it, the first of
    its devices is kept instead and the launcher, given no count, takes it (``--include localhost:<it>``).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    devices = [] if visible else ["--num_gpus", "1"]
    extra_env = {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
    sets = [f"run_dir={run_dir}", f"train.steps={steps}", f"train.save_every={save_every}",
            "train.keep_checkpoints=0", "train.progress=false", f"eval.every={save_every}",
            f"model.attention={attention}", "deepspeed.bf16.enabled=true", "deepspeed.zero_optimization.stage=2"]
    cmd = [r.python, "-m", "deepspeed.launcher.runner", *devices, "--master_port", str(_free_port()),
           os.path.join(ROOT, "tools", "train.py"), "--config",
           os.path.join(ROOT, "configs", "tests", "tiny_train.yaml"), "--set", *sets]
    return cmd, cmd + ["--resume", "auto"], extra_env


def check_train(r: Runner, env: dict, cpu: bool = False, steps: int = TRAIN_STEPS, save_every: int = SAVE_EVERY
                ) -> dict:
    """Part b. ``cpu=True`` (the test suite): the same on DeepSpeed's CPU accelerator (gloo), fewer steps."""
    kernels = env.get("xformers_kernels")
    attention = "segments" if cpu or kernels else "xformers"
    run_dir = os.path.join(r.out, "train_run")
    first, resumed, train_env = train_commands(r, run_dir, attention, steps, save_every)
    info = {"commands": [first, resumed], "attention": attention, "env": train_env}
    if kernels and not cpu:
        info["attention_note"] = f"xformers not usable ({kernels}): trained with attention=segments"
    if env.get("no_cuda") and not cpu:
        return part("train", "skip", env["no_cuda"], **info)
    if env["env"]["packages"].get("deepspeed") is None or env["env"].get("deepspeed_import"):
        why = env["env"].get("deepspeed_import") or "deepspeed is not installed"
        return part("train", "skip", f"no deepspeed: {why} (tools/gpu_check.sh --wheels DIR installs it)", **info)
    if r.dry_run:
        return part("train", "skip", "dry run", **info)
    shutil.rmtree(run_dir, ignore_errors=True)
    # On the CPU (the test suite) DeepSpeed may first compile or wait for its shared-memory comm op: allow
    # whatever budget is left.
    budget = r.left() if cpu else BUDGET["train"]
    res1 = r.run(first, "train_first.log", budget * 0.6, env=train_env)
    info["runs"] = [res1]
    rec1 = _records(run_dir)
    losses1 = {x["step"]: x["loss"] for x in rec1 if x.get("kind") == "train"}
    if res1["rc"] != 0 or sorted(losses1) != list(range(steps)):
        why = _why(res1)
        return part("train", "fail", f"first run: {why}, steps logged {len(losses1)} of {steps}; see {res1['log']}",
                    **info)
    ckpts = os.path.join(run_dir, "checkpoints")
    last = os.path.join(ckpts, f"global_step{steps}")
    if not os.path.isdir(os.path.join(ckpts, f"global_step{save_every}")) or not os.path.isdir(last):
        return part("train", "fail", f"expected checkpoints global_step{save_every} and global_step{steps} in "
                                     f"{ckpts}, found {sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else 'none'}",
                    **info)
    shutil.copy(os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "metrics_first_run.jsonl"))
    shutil.rmtree(last)  # as if the run had died before its last save
    res2 = r.run(resumed, "train_resume.log", max(budget - res1["seconds"], 30), env=train_env)
    info["runs"].append(res2)
    rec2 = _records(run_dir)
    resumed_at = [x["step"] for x in rec2 if x.get("kind") == "event" and x.get("event") == "resumed"]
    losses2 = {x["step"]: x["loss"] for x in rec2 if x.get("kind") == "train"}
    problems = []
    if res2["rc"] != 0:
        problems.append(_why(res2))
    if resumed_at != [save_every]:
        problems.append(f"resumed at {resumed_at or 'no step'} instead of {save_every}")
    if f"at step {save_every}" not in res2["tail"] and not problems:
        problems.append(f"the resumed run's log does not say 'at step {save_every}'")
    if sorted(losses2) != list(range(steps)):
        problems.append(f"steps logged after the resume: {len(losses2)} of {steps}")
    final = losses2.get(steps - 1)
    if final is None or not math.isfinite(final):
        problems.append(f"final loss {final}")
    diffs = [abs(losses2[s] - losses1[s]) / max(abs(losses1[s]), 1e-12) for s in range(save_every, steps)
             if s in losses2 and losses1[s] == losses1[s] and losses2[s] == losses2[s]]
    info.update(final_loss=final, first_loss=losses1.get(0), resumed_at=resumed_at,
                max_rel_loss_diff_after_resume=max(diffs) if diffs else None)
    if problems:
        return part("train", "fail", "resume: " + "; ".join(problems) + f"; see {res2['log']}", **info)
    detail = (f"{steps} steps (bf16, ZeRO-2, {'CPU' if cpu else '1 GPU'}, attention={attention}); loss "
              f"{losses1[0]:.3f} -> {final:.3f}; resumed from step {save_every} after the step-{steps} checkpoint "
              f"was removed; resumed losses differ from the first run's by at most "
              f"{max(diffs) if diffs else float('nan'):.1e} (relative)")
    return part("train", "pass", detail, **info)


# -- bench ------------------------------------------------------------------------------------------------

def check_bench(r: Runner, env: dict) -> dict:
    js, md = os.path.join(r.out, "benchmark_gpu.json"), os.path.join(r.out, "benchmark_gpu.md")
    cmd = [r.python, os.path.join(ROOT, "tools", "benchmark.py"), "gpu", "--repeats", "5", "--out", js, "--md", md]
    if env.get("no_cuda"):
        return part("bench", "skip", env["no_cuda"], command=cmd)
    if r.dry_run:
        return part("bench", "skip", "dry run", command=cmd)
    _remove(js, md)
    res = r.run(cmd, "benchmark_gpu.log", BUDGET["bench"])
    if res["rc"] != 0 or not os.path.isfile(js):
        why = _why(res)
        return part("bench", "fail", f"{why}; see {res['log']}", command=cmd, run=res)
    with open(js) as f:
        rep = json.load(f)["reports"][0]
    mfu = {k[4:]: v for k, v in rep["params"].items() if k.startswith("mfu_")}
    detail = ", ".join(f"MFU {k} {v:.0%}" for k, v in mfu.items()) or "no MFU measured"
    return part("bench", "pass", detail + f"; tables in {os.path.basename(md)}", command=cmd, run=res,
                mfu=mfu, notes=rep.get("notes"))


# -- report -----------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = ["# mmvit GPU check", "", f"`{results['command']}`", "",
             f"{results['finished']}, {results['seconds']:.0f} s, python {results['python']}", "",
             "| part | status | seconds | detail |", "|---|---|---|---|"]
    for p in results["parts"]:
        secs = sum(x.get("seconds", 0) for x in p.get("runs", [p.get("run", {})]))
        detail = p["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {p['part']} | {p['status']} | {secs:.0f} | {detail} |")
    lines += ["", f"**{results['verdict']}**", ""]
    tests = next((p for p in results["parts"] if p["part"] == "tests"), {})
    if tests.get("checks"):
        lines += ["## CUDA tests", "", "| check | status | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {c['status']} | {c['detail'][:240].replace('|', '/')} |" for c in tests["checks"]]
        lines.append("")
    md = os.path.join(results["out"], "benchmark_gpu.md")
    if os.path.isfile(md):
        with open(md) as f:
            lines += ["## Benchmark", "", f.read()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"), help="folder for the report and logs")
    p.add_argument("--python", dest="target", help="with --prepare: the GPU machine's Python (e.g. 3.12)")
    p.add_argument("--prepare", metavar="DIR", help="download the wheels for an offline GPU machine into DIR")
    p.add_argument("--torch", help="with --prepare: the GPU machine's torch version (selects xformers)")
    p.add_argument("--glibc", default="2.28", help="with --prepare: the GPU machine's glibc (default 2.28)")
    p.add_argument("--xformers", default="auto", help="with --prepare: auto, none, or a version")
    p.add_argument("--wheels", metavar="DIR", help="install the packages of DIR (from --prepare) offline first")
    p.add_argument("--venv", help="with --wheels: the venv to make and use (default OUT/venv)")
    p.add_argument("--here", action="store_true", help="with --wheels: install into this Python, no venv")
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--budget", type=float, default=480, help="seconds for everything (default 480)")
    p.add_argument("--dry-run", action="store_true", help="report the environment and the plan; run no part")
    p.add_argument("--strict", action="store_true", help="a skipped part fails the check")
    p.add_argument("--train-on-cpu", action="store_true", help=argparse.SUPPRESS)  # the test suite's hook
    a = p.parse_args(argv)

    if a.prepare:
        if not a.target:
            p.error("--prepare needs --python X.Y (the GPU machine's Python)")
        gpu_wheels.prepare(a.prepare, a.target, a.torch, a.glibc, a.xformers)
        return 0
    parts = [x for x in a.parts.split(",") if x]
    if set(parts) - set(PARTS):
        p.error(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    os.makedirs(a.out, exist_ok=True)
    python = sys.executable
    results: dict = {"command": "tools/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "out": os.path.abspath(a.out), "parts": [], "dry_run": a.dry_run}
    t0 = time.monotonic()
    if a.wheels:
        try:
            python, results["install"] = gpu_wheels.install(a.wheels, python,
                                                            None if a.here else a.venv or os.path.join(a.out, "venv"))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            print(f"gpu_check: install from {a.wheels} failed: {e}", file=sys.stderr)
            return 2
    results["python"] = python
    r = Runner(python, a.out, a.budget - (time.monotonic() - t0), a.dry_run)
    env = check_env(r)
    results["parts"].append(env)
    print(f"[gpu_check] env: {env['status']}: {env['detail']}", flush=True)
    if env["status"] == "fail":
        code = 2
    else:
        for name in parts:
            if name == "tests":
                res = check_tests(r, env)
            elif name == "train":
                res = check_train(r, env, cpu=a.train_on_cpu, steps=6 if a.train_on_cpu else TRAIN_STEPS,
                                  save_every=3 if a.train_on_cpu else SAVE_EVERY)
            else:
                res = check_bench(r, env)
            results["parts"].append(res)
            print(f"[gpu_check] {name}: {res['status']}: {res['detail']}", flush=True)
        ran = results["parts"][1:]
        failed = any(x["status"] == "fail" for x in ran) or (a.strict and any(x["status"] == "skip" for x in ran))
        code = 1 if failed else 0
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["exit_status"] = code
    results["verdict"] = {0: "everything that could run passed", 1: "FAILED (see the parts above)",
                          2: "the environment could not be used"}[code]
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
        f.write(markdown(results))
    print(f"[gpu_check] {results['verdict']} ({results['seconds']:.0f} s); report: "
          f"{os.path.join(a.out, 'gpu_check.json')}, {os.path.join(a.out, 'gpu_check.md')}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""tools/gpu_check.sh on a machine without CUDA: it reaches every CUDA part and skips it with the reason; the
correctness checks it runs on a GPU (mmvit/bench/gpu_check.py) pass on the CPU and catch a leaking backend; the
training part's orchestration (bf16, ZeRO-2, resume) runs for real on the CPU; the offline wheel folder is
prepared from PyPI for Python 3.12 and installed into a venv that keeps the system torch."""

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gpu_wheels  # noqa: E402


def _run(*args, timeout=600):
    env = dict(os.environ, GPU_CHECK_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(["bash", SCRIPT, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _report(out):
    with open(os.path.join(out, "gpu_check.json")) as f:
        full = json.load(f)
    return {p["part"]: p for p in full["parts"]}, full


needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@needs_no_cuda
def test_reaches_every_cuda_part_and_skips_it_with_the_reason(tmp_path):
    out = str(tmp_path / "check")
    proc = _run("--out", out, "--strict")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # --strict: skipped parts fail the check
    parts, full = _report(out)
    assert parts["env"]["status"] == "pass"
    assert parts["env"]["env"]["torch"]["version"] == torch.__version__
    for name in ("tests", "train", "bench"):
        assert parts[name]["status"] == "skip"
        assert parts[name]["detail"].startswith("no CUDA device: torch " + torch.__version__)
    assert parts["tests"]["command"][-3:-1] == ["mmvit.bench.gpu_check", "--out"]
    first, resumed = parts["train"]["commands"]
    assert first[1:5] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "1"]
    assert {"deepspeed.bf16.enabled=true", "deepspeed.zero_optimization.stage=2", "train.steps=50",
            "train.save_every=25"} <= set(first)
    assert resumed == first + ["--resume", "auto"]
    assert parts["bench"]["command"][1:3] == [os.path.join(ROOT, "tools", "benchmark.py"), "gpu"]
    assert full["exit_status"] == 1 and "FAILED" in full["verdict"]
    with open(os.path.join(out, "gpu_check.md")) as f:
        md = f.read()
    assert "| tests | skip |" in md and "| train | skip |" in md and "| bench | skip |" in md


@needs_no_cuda
def test_dry_run_without_strict_passes(tmp_path):
    out = str(tmp_path / "dry")
    proc = _run("--out", out, "--dry-run", "--parts", "tests,bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts, full = _report(out)
    assert set(parts) == {"env", "tests", "bench"} and full["dry_run"]
    assert all(parts[n]["status"] == "skip" and "no CUDA" in parts[n]["detail"] for n in ("tests", "bench"))
    assert "[gpu_check] tests: skip: no CUDA device" in proc.stdout


def test_usage_errors_exit_2(tmp_path):
    assert _run("--parts", "tests,nope", "--out", str(tmp_path)).returncode == 2
    assert _run("--prepare", str(tmp_path / "w")).returncode == 2          # --prepare needs --python
    proc = _run("--wheels", str(tmp_path / "empty"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "manifest.json is missing" in proc.stderr


# -- the correctness checks of part a, on the CPU ----------------------------------------------------------

def test_correctness_checks_pass_on_cpu_for_exact_backends():
    from mmvit.bench import gpu_check

    report = gpu_check.run_checks("cpu", ["segments", "dense", "flex"])
    names = {c["name"]: c for c in report["checks"]}
    assert names["backend flex"]["status"] == "skip" and "no backward" in names["backend flex"]["detail"]
    for b in ("segments", "dense"):
        for mode in gpu_check.MODES:
            assert names[f"agreement {b} {mode}"]["status"] == "pass", names[f"agreement {b} {mode}"]
        for mode in ("float32", "bf16"):
            assert names[f"isolation {b} {mode}"]["status"] == "pass", names[f"isolation {b} {mode}"]
    # The target was packed into different rows and offsets.
    detail = names["isolation segments float32"]["detail"]
    assert "row 1 of 4, offset 12" in detail and "row 0 of 3, offset 18" in detail and "row 1 of 2, offset 0" in detail
    assert report["passed"] is True


def _leaky(q, k, v, layout):
    """Attention over the whole flat sequence: examples see each other (what a wrong mask would do)."""
    qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))
    return F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)


def _off_by_one(q, k, v, layout):
    """Each example also sees the first token after it: a mask one token too wide."""
    allowed = layout.dense_mask | torch.roll(layout.dense_mask, 1, dims=1)
    qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))
    return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed.to(q.device))[0].transpose(0, 1)


@pytest.mark.parametrize("bug", [_leaky, _off_by_one])
def test_correctness_checks_catch_a_backend_that_leaks(monkeypatch, bug):
    from mmvit.bench import gpu_check
    from mmvit.models import attention

    monkeypatch.setitem(attention._FUNCS, "segments", bug)
    cpu = torch.device("cpu")
    results = gpu_check.check_agreement(cpu, ["segments"]) + gpu_check.check_isolation(cpu, ["segments"])
    assert [r["status"] for r in results] == ["fail"] * 4, results


# -- part b on the CPU --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_part_resumes_from_the_checkpoint_on_cpu(tmp_path):
    """The same launcher, overrides (bf16, ZeRO-2), checkpoint removal and resume as on the GPU, over 6 steps on
    DeepSpeed's CPU accelerator (about 50 s once DeepSpeed's comm op is built for this venv)."""
    out = str(tmp_path / "train")
    proc = _run("--out", out, "--parts", "train", "--train-on-cpu", "--budget", "900", timeout=1000)
    parts, _ = _report(out)
    train = parts["train"]
    assert proc.returncode == 0 and train["status"] == "pass", train["detail"] + proc.stdout[-2000:]
    assert train["resumed_at"] == [3] and train["final_loss"] == train["final_loss"]
    assert train["max_rel_loss_diff_after_resume"] < 1e-4  # same losses as the uninterrupted run
    with open(os.path.join(out, "train_run", "metrics.jsonl")) as f:
        steps = [r["step"] for r in map(json.loads, f) if r["kind"] == "train"]
    assert steps == list(range(6))


# -- offline wheels ---------------------------------------------------------------------------------------

def test_version_rules():
    assert gpu_wheels.version_tuple("2.11.0+cu130") == (2, 11, 0) and gpu_wheels.version_tuple("2.11") == (2, 11, 0)
    assert gpu_wheels.admits(">=2.10", "2.11.0+cu130") and not gpu_wheels.admits("==2.10.0", "2.11")
    assert gpu_wheels.admits("==2.9.1", "2.9.1") and not gpu_wheels.admits("==2.9.1", "2.9.0")
    assert gpu_wheels.admits(">=2.4,<2.6", "2.5.1") and not gpu_wheels.admits(">=2.4,<2.6", "2.6")
    assert gpu_wheels.admits("==2.10.*", "2.10.3") and not gpu_wheels.admits("==2.10.*", "2.11.0")
    assert gpu_wheels.torch_requirement(["numpy", "torch==2.10.0"]) == "==2.10.0"
    assert gpu_wheels.torch_requirement(["torch>=2.10", "numpy"]) == ">=2.10"
    assert gpu_wheels.torch_requirement(["torchvision", "torch (>=2.1) ; extra == 'x'"]) is None
    tags = gpu_wheels.platforms("2.28")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and tags[-1] == "manylinux2014_x86_64"


def _registry_reachable() -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "xformers"], check=False,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and "Available versions" in proc.stdout


def _tag_fits_cp312_manylinux_2_28(wheel: str) -> bool:
    py, abi, plat = wheel[:-4].split("-")[-3:]
    py_ok = any(t in ("py3", "py2", "cp312") or (t.startswith(("cp3", "py3")) and int(t[3:] or 0) <= 12)
                for t in py.split("."))
    abi_ok = abi in ("none", "abi3", "cp312")
    plat_ok = plat == "any" or any(
        p.endswith("x86_64") and (p.startswith(("manylinux2014", "manylinux2010", "manylinux1"))
                                  or (p.startswith("manylinux_2_") and int(p.split("_")[2]) <= 28))
        for p in plat.split("."))
    return py_ok and abi_ok and plat_ok


@pytest.mark.slow
def test_prepare_downloads_wheels_for_python_312(tmp_path):
    """For real, from PyPI: every package except torch as a cp312 manylinux x86_64 wheel (about 25 s)."""
    if not _registry_reachable():
        pytest.skip("the package registry is not reachable from here")
    folder = str(tmp_path / "wheels")
    m = gpu_wheels.prepare(folder, "3.12", torch_version="2.11")
    files = [f for f in os.listdir(folder) if f.endswith(".whl")]
    assert not any(f.startswith("torch-") for f in files)
    assert all(_tag_fits_cp312_manylinux_2_28(f) for f in files), files
    names = {gpu_wheels._dist_name(f) for f in files}
    assert {"deepspeed", "xformers", "mmvit", "numpy", "av", "decord", "webdataset", "einops", "pyyaml",
            "safetensors", "tqdm", "pillow", "pydantic", "pydantic-core", "hjson", "ninja"} <= names
    assert m["deepspeed"]["file"] == "deepspeed-0.19.8-py3-none-any.whl"   # built here from the source archive
    assert m["xformers"]["version"] == "0.0.35" and m["xformers"]["torch_requirement"] == ">=2.10"
    assert m["xformers"]["built_with"]["torch"].startswith("2.10")
    assert {n.split("==")[0] for n in m["install"]} == names and "deepspeed==0.19.8" in m["install"]
    with zipfile.ZipFile(os.path.join(folder, m["deepspeed"]["file"])) as z:  # no pre-compiled op inside
        assert not any(n.endswith(".so") for n in z.namelist())
    assert os.path.isfile(os.path.join(folder, m["source"]["file"]))


@pytest.mark.slow
def test_xformers_is_picked_by_its_declared_torch():
    """0.0.34 and older pin one torch release: torch 2.9.1 gets 0.0.33.post2 (PyPI metadata only)."""
    if not _registry_reachable():
        pytest.skip("the package registry is not reachable from here")
    target = gpu_wheels.target_args("3.12", "2.28")
    assert gpu_wheels.pick_xformers("2.9.1", target)["version"] == "0.0.33.post2"
    assert gpu_wheels.pick_xformers("2.11.0+cu130", target)["version"] == "0.0.35"


def _fake_wheel(folder: str, name: str, version: str) -> None:
    """A minimal pure-Python wheel (PEP 427) holding one module."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(folder, f"{name}-{version}-py3-none-any.whl"), "w") as z:
        for n, text in files.items():
            z.writestr(n, text)


@pytest.mark.slow
def test_offline_install_into_a_venv_keeps_the_system_torch(tmp_path):
    folder = str(tmp_path / "wheels")
    os.makedirs(folder)
    _fake_wheel(folder, "mmvit_offline_probe", "1.0")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"python": here, "install": ["mmvit_offline_probe==1.0"]}, f)
    python, info = gpu_wheels.install(folder, sys.executable, venv=str(tmp_path / "venv"))
    assert python == str(tmp_path / "venv" / "bin" / "python")
    assert info["torch_after"] == info["torch_before"] == f"{torch.__version__} {torch.__file__}"
    proc = subprocess.run([python, "-c", "import mmvit_offline_probe as m; print(m.VALUE)"], check=False,
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "42"
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"python": "3.99", "install": []}, f)
    with pytest.raises(RuntimeError, match="wheels for Python 3.99"):
        gpu_wheels.install(folder, sys.executable, venv=None)


# -- part c's code, and part b's devices -------------------------------------------------------------------

def test_gpu_benchmark_code_runs_on_a_cpu_stand_in():
    """The benchmark's own code (tables, first calls, MFU) on the CPU with tiny sizes: no figure means anything."""
    from mmvit.bench import gpu

    report = gpu.run(tiny=True, repeats=1, device="cpu")
    assert report.skipped is None and report.params["backends"] == ["segments", "dense"]
    attn, step = report.tables
    assert {r["variant"] for r in attn.rows} == {"segments", "dense"} and all(r["ms"] > 0 for r in attn.rows)
    assert [r["what"] for r in step.rows][:1] == ["step, segments"] and report.params["mfu_segments"] > 0
    assert any(n.startswith("xformers: skipped") for n in report.notes)
    assert any(n.startswith("flex: skipped") and "no backward" in n for n in report.notes)


def test_training_keeps_the_schedulers_gpu(monkeypatch):
    """DeepSpeed's --num_gpus would replace CUDA_VISIBLE_DEVICES with 0; a scheduler's choice is kept instead."""
    import gpu_check as tool

    r = tool.Runner(sys.executable, "/tmp", 10, dry_run=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    first, _, env = tool.train_commands(r, "/tmp/x", "segments", 50, 25)
    assert first[3:5] == ["--num_gpus", "1"] and env == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    first, _, env = tool.train_commands(r, "/tmp/x", "segments", 50, 25)
    assert "--num_gpus" not in first and env == {"CUDA_VISIBLE_DEVICES": "3"}

"""bf16 training: the precision rules of mmvit/train/precision.py, the model's bf16 numerics against fp64
references, the isolation invariant in bf16, and a bf16 run of the tiny config following the fp32 run."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import mmvit
from mmvit.models.attention import attend_dense, attend_segments, attention_matmul
from mmvit.models.layout import build_layout
from mmvit.models.pooling import MAPPool, segment_mean
from mmvit.train import precision as prec
from tests.conftest import tiny_model

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(monkeypatch, **on):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {k: on.get(k, False) for k in prec.CPU_BF16_FLAGS})


# -- choosing the precision ----------------------------------------------------------------------------------

def test_auto_follows_the_cpu_flags(monkeypatch):
    _flags(monkeypatch, avx512_bf16=True)
    chosen, why = prec.resolve("auto", {}, CPU)
    assert chosen == "bf16" and "avx512_bf16" in why
    _flags(monkeypatch, amx_bf16=True)
    assert prec.resolve("auto", {}, CPU)[0] == "bf16"
    _flags(monkeypatch)
    chosen, why = prec.resolve("auto", {}, CPU)
    assert chosen == "fp32" and "emulated" in why


def test_cpu_flags_agree_with_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert prec.cpu_flags() == {k: k in flags for k in prec.CPU_BF16_FLAGS}


def test_unset_precision_is_what_the_deepspeed_section_says():
    assert prec.resolve(None, {}, CPU)[0] == "fp32"
    assert prec.resolve(None, {"bf16": {"enabled": True}}, CPU)[0] == "bf16"
    assert prec.resolve(None, {"bfloat16": {"enabled": True}}, CPU)[0] == "bf16"  # DeepSpeed's legacy name
    assert prec.resolve(None, {"bf16": {"enabled": False}}, CPU)[0] == "fp32"
    assert prec.resolve("bf16", {"bf16": {"enabled": True}}, CPU)[0] == "bf16"


@pytest.mark.parametrize("requested, ds, message", [
    ("fp32", {"bf16": {"enabled": True}}, "set the precision in one place"),
    ("auto", {"fp16": {"enabled": True}}, "set the precision in one place"),
    (None, {"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "both enabled"),
    ("bf16", {"torch_autocast": {"enabled": True}}, "choose one"),
    ("fp16", {}, "needs CUDA"),
    ("half", {}, "choose from"),
])
def test_conflicting_precisions_are_refused(requested, ds, message):
    with pytest.raises(ValueError, match=message):
        prec.resolve(requested, ds, CPU)


def test_resume_keeps_the_checkpoint_precision(monkeypatch):
    _flags(monkeypatch)  # auto alone would pick fp32 here
    assert prec.resolve("auto", {}, CPU, saved="bf16")[0] == "bf16"
    with pytest.raises(ValueError, match="ds_to_universal"):
        prec.resolve("fp32", {}, CPU, saved="bf16")
    assert prec.resolve("fp32", {}, CPU, saved="fp32")[0] == "fp32"


def test_apply_fills_fp32_accumulation_and_communication():
    zero1 = prec.apply({"zero_optimization": {"stage": 1}}, "bf16", CPU)
    assert zero1["bf16"] == {"enabled": True}
    assert zero1["data_types"] == {"grad_accum_dtype": "fp32"}
    assert zero1["communication_data_type"] == "fp32"
    zero0 = prec.apply({}, "bf16", CPU)
    assert "data_types" not in zero0  # DeepSpeed 0.19.8 refuses bf16 weights with fp32 accumulation at ZeRO-0
    kept = prec.apply({"zero_optimization": {"stage": 2}, "data_types": {"grad_accum_dtype": "bf16"},
                       "bf16": {"enabled": True, "immediate_grad_update": False}}, "bf16", torch.device("cuda"))
    assert kept["data_types"]["grad_accum_dtype"] == "bf16" and "communication_data_type" not in kept
    assert kept["bf16"] == {"enabled": True, "immediate_grad_update": False}
    assert prec.apply({"bf16": {"enabled": False}}, "fp32", CPU) == {}


def test_build_ds_config_switches_bf16_on():
    from mmvit.train.config import TrainConfig
    from mmvit.train.engine import build_ds_config

    ds = build_ds_config({"gradient_clipping": 1.0, "zero_optimization": {"stage": 1}}, TrainConfig(),
                         precision="bf16")
    assert ds["bf16"]["enabled"] and ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert "bf16" not in build_ds_config({"gradient_clipping": 1.0}, TrainConfig())


# -- bf16 numerics of the model's parts, against fp64 ---------------------------------------------------------

def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the reference's largest magnitude."""
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max())


def _layout(lengths, seq_len):
    """One row holding examples of ``lengths`` tokens, padded to ``seq_len``."""
    row = [i + 1 for i, n in enumerate(lengths) for _ in range(n)]
    return build_layout(torch.tensor([row + [0] * (seq_len - len(row))]))


def test_bf16_attention_matches_fp64_and_its_matmul_path_is_taken(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    layout = _layout([9, 9, 16, 5, 24], 70)
    q, k, v = (torch.randn(layout.num_tokens, 4, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    ref = attend_dense(q, k, v, layout)
    calls = []
    real = attention_matmul
    monkeypatch.setattr("mmvit.models.attention.attention_matmul", lambda *a: calls.append(1) or real(*a))
    out = attend_segments(*(t.bfloat16() for t in (q, k, v)), layout)
    assert out.dtype == torch.bfloat16 and len(calls) == len(layout.groups)
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002): inputs, scores and output each round once.
    assert _rel(out, ref) < 0.02
    assert _rel(attend_segments(q.float(), k.float(), v.float(), layout), ref) < 1e-5
    calls.clear()
    attend_segments(q.float(), k.float(), v.float(), layout)
    assert not calls  # fp32 keeps SDPA


def test_attention_matmul_gradients_match_sdpa():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad((attention_matmul(q, k, v) * w).sum(), (q, k, v))
    theirs = torch.autograd.grad((torch.nn.functional.scaled_dot_product_attention(q, k, v) * w).sum(), (q, k, v))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_map_pooling_and_mean_sum_in_fp32():
    gen = torch.Generator().manual_seed(2)
    # One long example: a bf16 running sum of 600 tokens would drift far more than 2^-9.
    layout = _layout([600, 40], 640)
    x = torch.randn(layout.num_tokens, 32, generator=gen, dtype=torch.float64) + 3.0
    pool = MAPPool(32, 2, 64).double()
    ref = pool(x, layout)
    out = pool.bfloat16()(x.bfloat16(), layout)
    assert out.dtype == torch.bfloat16 and _rel(out, ref) < 0.03
    mean = segment_mean(x.bfloat16(), layout.token_example, 2)
    assert mean.dtype == torch.bfloat16 and _rel(mean, segment_mean(x, layout.token_example, 2)) < 4e-3


def test_bf16_fourier_angles_keep_positions_apart():
    model = tiny_model(pos_embed={"type": "fourier", "fractional": False}).double()
    coords = torch.tensor([[0, 60, 60], [0, 60, 61]])
    extent = torch.tensor([[1, 64, 64], [1, 64, 64]])
    ex = torch.zeros(2, dtype=torch.long)
    pe = model.pos_embed
    ref = pe(coords, extent, ex, extent)
    out = pe.bfloat16()(coords, extent, ex, extent)
    assert out.dtype == torch.bfloat16
    # The two neighbours' difference survives: within bf16's rounding of the projected features.
    assert _rel(out[1] - out[0], ref[1] - ref[0]) < 0.05


def test_bf16_drop_path_keeps_bf16_tokens():
    model = tiny_model(drop_path=0.5).bfloat16().train()
    batch = mmvit.pack([torch.randn(3, 16, 24), torch.randn(3, 8, 8)], patch_size=8, seq_len=16)
    batch = dataclasses.replace(batch, patches=batch.patches.bfloat16())
    out = model(batch)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# -- isolation in bf16 ------------------------------------------------------------------------------------------

def _run(model, samples, index, seq_len, dtype):
    samples = [s.to(dtype) for s in samples]
    x = samples[index].clone().requires_grad_()
    samples[index] = x
    batch = mmvit.pack(samples, patch_size=8, seq_len=seq_len)
    e = batch.example_ids.tolist().index(index)
    out = model(batch)[e]
    model.zero_grad()
    out.float().pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("cfg", [{}, {"pos_embed": {"type": "fourier", "fractional": True}, "pool": "mean"}])
def test_isolation_in_bf16(cfg):
    """One image alone and packed with others: in bf16 both runs round differently (the matmuls see other
    shapes), so each is compared with the fp64 run of the image alone, and the packed run's error may be at
    most twice the alone run's plus bf16's rounding (the rule of tools/gpu_check.sh on GPUs)."""
    model = tiny_model(**cfg).bfloat16().double().train()  # weights bf16 can hold exactly: the fp64 run is exact
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(3, 24, 16, generator=gen).bfloat16().double()
    others = [torch.randn(3, 8 * (1 + i % 3), 8 * (1 + (i * 2) % 3), generator=gen, dtype=torch.float64)
              for i in range(6)]
    ref = _run(model, [target], 0, 24, torch.float64)
    model.bfloat16()
    alone = _run(model, [target], 0, 24, torch.bfloat16)
    packed = _run(model, others[:2] + [target] + others[2:], 2, 40, torch.bfloat16)
    floor = 4e-3  # twice bf16's relative rounding, 2 * 2^-9
    for name, a, p, r in [("output", alone[0], packed[0], ref[0]), ("input grad", alone[1], packed[1], ref[1])] + \
            [(n, alone[2][n], packed[2][n], ref[2][n]) for n in ref[2]]:
        assert _rel(p, r) <= 2 * _rel(a, r) + floor, f"{name}: packed {_rel(p, r):.2e}, alone {_rel(a, r):.2e}"
        assert _rel(a, r) < 0.05, f"{name}: bf16 alone {_rel(a, r):.2e} from fp64"


# -- training: bf16 follows fp32 ----------------------------------------------------------------------------------

STEPS = 40
WINDOW = 10
# Largest |bf16 - fp32| between the mean losses of each WINDOW steps. The tiny config's loss falls from 2.36
# to ~0.02 in 40 steps; per step the two runs differ by up to 0.10 (the same batch, slightly different
# weights), over 10-step windows by at most 0.036 (measured on AMD EPYC with avx512_bf16, torch 2.13).
LOSS_TOL = 0.06


def _train(run_dir, precision):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config",
           os.path.join(ROOT, "configs", "tests", "tiny_train.yaml"), "--set", f"run_dir={run_dir}",
           f"train.steps={STEPS}", f"train.precision={precision}", "train.progress=false", "train.save_every=0",
           "train.ema_decay=null", "eval.every=0", "eval.at_end=false", "export.enabled=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if r["kind"] == "train"]
    return {r["step"]: r["loss"] for r in records}, proc.stdout


@pytest.mark.slow
def test_bf16_run_follows_the_fp32_run(tmp_path):
    fp32, _ = _train(str(tmp_path / "fp32"), "fp32")
    bf16, log = _train(str(tmp_path / "bf16"), "bf16")
    assert "bf16" in log and sorted(fp32) == sorted(bf16) and len(fp32) == STEPS
    steps = sorted(fp32)
    windows = [steps[i:i + WINDOW] for i in range(0, STEPS, WINDOW)]
    gaps = [abs(sum(bf16[s] for s in w) - sum(fp32[s] for s in w)) / len(w) for w in windows]
    assert max(gaps) < LOSS_TOL, gaps
    assert bf16[max(bf16)] < bf16[min(bf16)] - 0.1  # and it learns

"""fp32 against bf16 for mmvit's packed training step on this machine: speed, where time goes, and agreement.

    python -m mmvit.bench.precision [--parts step,ops,profile,check] [--widths 192 384 768] [--repeats 3]
                                    [--tiny] [--out precision.json]

Training-step variants at each width (ViT-Ti/S/B widths and heads, MLP 4x, ``--depth`` blocks, patch 16,
NaViT's resolution mix packed at ``seq_len``), each with AdamW:

- ``fp32``: fp32 weights, fp32 compute (mmvit today).
- ``autocast``: fp32 weights and optimizer, forward under ``torch.autocast(device, bfloat16)``; what
  DeepSpeed's ``torch_autocast`` section does around ``engine.forward`` (deepspeed/runtime/engine.py).
- ``bf16``: bf16 weights and inputs with an fp32 master copy that AdamW updates, gradients copied to fp32
  before the update and weights copied back after it; what DeepSpeed's ``bf16: {enabled: true}`` does
  (``FP16_UnfusedOptimizer`` at ZeRO-0, fp32 partitions at ZeRO-1/2).
- ``bf16 + fp32 pool``: as ``bf16``, with MAP pooling's scores, per-example softmax and weighted sum upcast to
  fp32 (a proposed change of mmvit/models/pooling.py, patched onto the instance here).
- ``... + matmul attn``: the ``segments`` attention with explicit matmuls and an fp32 softmax in place of SDPA
  (a proposed change of mmvit/models/attention.py, patched onto the instances here).

A square matmul in fp32 and in bf16 runs in the same interleaved rounds and gives each precision's peak.
``ops`` times single ops (forward and backward) in both precisions, ``profile`` lists the top ops of one
step, ``check`` (on CPU) measures the isolation invariant and a short training run's loss curves in each
precision. On a shared machine prefer ``--threads 1``: one thread per rank is also what a 2-rank
``deepspeed --num_gpus 2`` run on 2 cores uses, and descheduled OpenMP threads stretch multi-threaded steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

import mmvit
from mmvit.bench.common import Column, Report, Table, interleaved, machine_info, median, ratio
from mmvit.bench.images import make_images, sample_sizes, token_counts
from mmvit.bench.step import train_flops
from mmvit.models.attention import Attention
from mmvit.models.pooling import MAPPool, segment_softmax

VARIANTS = ("fp32", "autocast", "autocast + matmul attn", "bf16", "bf16 + fp32 pool", "bf16 + fp32 pool + matmul attn")
HEADS = {192: 3, 384: 6, 768: 12}


def bf16_capability() -> dict:
    """What this CPU offers for bf16 matmuls: torch's view (``torch.cpu.get_capabilities``, torch >= 2.8) and
    the kernel's ``/proc/cpuinfo`` flags (``avx512_bf16``: AVX512-BF16 dot products; ``amx_bf16``: AMX tiles)."""
    caps = {}
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        c = get()
        caps["torch"] = {k: bool(c.get(k, False)) for k in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")}
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        caps["cpuinfo"] = {k: k in flags for k in ("avx512_bf16", "amx_bf16", "amx_tile")}
    except OSError:
        pass
    # oneDNN's own check (reported, not to be relied on): true on any AVX512BW/VL/DQ CPU, where bf16 is
    # emulated and slower than fp32 (pytorch/pytorch#86550).
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is not None:
        caps["mkldnn_bf16"] = bool(check())
    return caps


# -- the step variants ----------------------------------------------------------------------------------

class MasterAdamW:
    """AdamW on fp32 master copies of low-precision weights (DeepSpeed's unfused bf16 scheme)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.opt = torch.optim.AdamW(self.master, lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for m, p in zip(self.master, self.params):
            m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        for m, p in zip(self.master, self.params):
            p.copy_(m)  # round to the weights' bf16


def map_pool_fp32(self: MAPPool, x: torch.Tensor, layout) -> torch.Tensor:
    """MAPPool.forward with the scores ``[N, H]``, their per-example softmax and the weighted sum ``[E, H, d]``
    in fp32; the linear layers stay in the weights' dtype."""
    n, e = x.shape[0], layout.num_examples
    q = self.q(self.probe).view(self.heads, self.head_dim).float()
    k, v = self.kv(x).view(n, 2, self.heads, self.head_dim).unbind(1)
    scores = (k.float() * q).sum(-1) / math.sqrt(self.head_dim)
    w = segment_softmax(scores, layout.token_example, e)
    pooled = torch.zeros(e, self.heads, self.head_dim, dtype=torch.float32, device=x.device)
    pooled = pooled.index_add_(0, layout.token_example, w[..., None] * v.float())
    out = self.proj(pooled.reshape(e, -1).to(x.dtype))
    return out + self.mlp(self.norm(out))


def attend_segments_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
    """The ``segments`` backend with explicit matmuls in the inputs' dtype and the softmax in fp32, instead of
    SDPA's CPU flash kernel (slower in bf16 than in fp32 on CPUs without AMX). ``[N, H, d]`` -> ``[N, H, d]``."""
    h, d = q.shape[1:]
    outs = []
    for qs, ks, vs, (_, n, length) in zip(q.split(layout.group_sizes), k.split(layout.group_sizes),
                                          v.split(layout.group_sizes), layout.groups):
        qs, ks, vs = (t.view(n, length, h, d).transpose(1, 2) for t in (qs, ks, vs))  # [n, H, l, d]
        scores = (qs @ ks.transpose(-1, -2)) * d ** -0.5                                # [n, H, l, l]
        o = torch.softmax(scores.float(), dim=-1).to(vs.dtype) @ vs
        outs.append(o.transpose(1, 2).reshape(n * length, h, d))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def attention_matmul(self: Attention, x: torch.Tensor, layout) -> torch.Tensor:
    """Attention.forward with :func:`attend_segments_matmul` (qk-norm, projections unchanged)."""
    n = x.shape[0]
    q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)
    q, k = self.q_norm(q), self.k_norm(k)
    return self.proj(attend_segments_matmul(q, k, v, layout).reshape(n, -1))


def build_variant(name: str, model_cfg: dict, seed: int) -> tuple[torch.nn.Module, torch.dtype, bool]:
    """(model, input dtype, autocast on) for a variant; every variant starts from the same fp32 weights."""
    torch.manual_seed(seed)
    model = mmvit.build_model(model_cfg)
    if "matmul attn" in name:
        for m in model.modules():
            if isinstance(m, Attention):
                m.forward = types.MethodType(attention_matmul, m)
    if name.startswith("bf16"):
        model = model.to(torch.bfloat16)
        if "fp32 pool" in name and isinstance(getattr(model, "pool", None), MAPPool):
            model.pool.forward = types.MethodType(map_pool_fp32, model.pool)
        return model, torch.bfloat16, False
    return model, torch.float32, name.startswith("autocast")


def make_step(name: str, model_cfg: dict, images: list[torch.Tensor], labels: torch.Tensor, patch: int,
              seq_len: int, seed: int, device: torch.device) -> Callable[[], float]:
    """One training step (pack, cast patches, forward, fp32 cross-entropy, backward, AdamW); returns the loss."""
    model, dtype, autocast = build_variant(name, model_cfg, seed)
    model.to(device).train()
    opt = MasterAdamW(list(model.parameters()), 1e-4) if dtype != torch.float32 else \
        torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        b = mmvit.pack(images, patch_size=patch, seq_len=seq_len, labels=labels).to(device)
        b = dataclasses.replace(b, patches=b.patches.to(dtype))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(b)
        loss = F.cross_entropy(logits.float(), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def model_config(width: int, depth: int, classes: int, patch: int) -> dict:
    return {"type": "navit", "width": width, "depth": depth, "heads": HEADS.get(width, max(1, width // 64)),
            "mlp_dim": 4 * width, "patch_size": patch, "num_classes": classes,
            "head": {"type": "linear", "zero_init": False}}


def run_steps(widths: list[int], *, depth: int, n_images: int, seq_len: int, repeats: int, seed: int,
              square: int, device: torch.device, budget_s: float) -> Report:
    t_start = time.perf_counter()
    patch, classes = 16, 10
    sizes = sample_sizes(n_images, seed=seed + 2, side=(64, 256), patch=patch)
    images = make_images(sizes, seed=seed)
    lengths = token_counts(sizes, patch)
    labels = torch.randint(0, classes, (n_images,), generator=torch.Generator().manual_seed(seed))
    report = Report("precision: training step", params={"depth": depth, "images": n_images, "seq_len": seq_len,
                                                         "tokens": sum(lengths), "patch": patch, "square": square,
                                                         "threads": torch.get_num_threads()})
    a32, w32 = torch.randn(square, square, device=device), torch.randn(square, square, device=device)
    a16, w16 = a32.bfloat16(), w32.bfloat16()
    table = Table(f"Training step (forward, backward, AdamW), {n_images} images, {sum(lengths)} tokens, depth {depth}",
                  [Column("width", "width"), Column("variant", "variant"), Column("ms", "median ms", "{:.0f}"),
                   Column("rate", "examples/s", "{:.1f}"), Column("speedup", "fp32 time / time (per round)", "{:.2f}x"),
                   Column("gflops", "model GFLOP/s", "{:.0f}"), Column("util", "of own-precision peak", "{:.0%}")])
    for width in widths:
        cfg = model_config(width, depth, classes, patch)
        variants: dict[str, Callable] = {v: make_step(v, cfg, images, labels, patch, seq_len, seed, device)
                                         for v in VARIANTS}
        variants["matmul fp32"] = lambda: a32 @ w32
        variants["matmul bf16"] = lambda: a16 @ w16
        times = interleaved(variants, warmup=1, repeats=repeats, budget_s=budget_s)
        peak = {p: 2 * square ** 3 / median(times[f"matmul {p}"]) for p in ("fp32", "bf16")}
        flops = train_flops(lengths, width=width, depth=depth, mlp_dim=4 * width, patch_dim=3 * patch * patch,
                            num_classes=classes)
        for v in VARIANTS:
            m = median(times[v])
            own = "fp32" if v == "fp32" else "bf16"
            table.rows.append({"width": width, "variant": v, "ms": 1e3 * m, "rate": n_images / m,
                               "speedup": ratio(times, "fp32", v), "gflops": flops / m / 1e9,
                               "util": flops / m / peak[own]})
        for p in ("fp32", "bf16"):
            table.rows.append({"width": width, "variant": f"matmul {square}^3 {p}", "gflops": peak[p] / 1e9})
        report.raw[str(width)] = times
        report.params[f"gflop_per_step_{width}"] = flops / 1e9
    report.tables.append(table)
    report.notes.append("autocast keeps fp32 weights (casts cached per forward); bf16 variants hold bf16 weights "
                        "and an fp32 master copy; the loss is fp32 in every variant. Util: model FLOPs/s "
                        "(mmvit.bench.step.train_flops) over the square matmul of the variant's compute precision, "
                        "measured in the same rounds.")
    report.seconds = time.perf_counter() - t_start
    return report


# -- single ops -----------------------------------------------------------------------------------------

def _op_cases(width: int, tokens: int, device: torch.device) -> dict[str, Callable[[torch.dtype], Callable]]:
    """Ops of the trunk at its shapes, forward + backward, as functions of the dtype."""
    h = HEADS.get(width, max(1, width // 64))
    d, groups, length = width // h, max(1, tokens // 100), 100

    def mk(shape, dtype):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    def linear(dtype):
        x, w = mk((tokens, width), dtype), mk((4 * width, width), dtype)
        return lambda: F.linear(x, w).sum().backward()

    def layer_norm(dtype):
        x, w = mk((tokens, width), dtype), mk((width,), dtype)
        return lambda: F.layer_norm(x, (width,), w, None, 1e-6).sum().backward()

    def sdpa(dtype):
        q, k, v = (mk((groups, h, length, d), dtype) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()

    def attn_matmul(dtype):
        q, k, v = (mk((groups, h, length, d), dtype) for _ in range(3))

        def f():
            p = torch.softmax(((q @ k.transpose(-1, -2)) * d ** -0.5).float(), dim=-1).to(dtype)
            (p @ v).sum().backward()
        return f

    def gelu(dtype):
        x = mk((tokens, 4 * width), dtype)
        return lambda: F.gelu(x).sum().backward()

    def pool_softmax(dtype):
        s = mk((tokens, h), dtype)
        seg = torch.arange(tokens, device=device) * 32 // tokens
        return lambda: segment_softmax(s, seg, 32).sum().backward()

    def index_add(dtype):
        v = mk((tokens, h, d), dtype)
        seg = torch.arange(tokens, device=device) * 32 // tokens

        def f():
            out = torch.zeros(32, h, d, device=device, dtype=dtype).index_add(0, seg, v)
            out.sum().backward()
        return f

    return {f"linear [{tokens},{width}]x[{width},{4 * width}]": linear, f"layer_norm [{tokens},{width}]": layer_norm,
            f"SDPA [{groups},{h},{length},{d}]": sdpa, f"matmul attention, fp32 softmax [{groups},{h},{length},{d}]":
            attn_matmul, f"gelu [{tokens},{4 * width}]": gelu,
            f"segment_softmax [{tokens},{h}]": pool_softmax, f"index_add_ [{tokens},{h},{d}]": index_add}


def run_ops(width: int, tokens: int, repeats: int, device: torch.device) -> Report:
    t_start = time.perf_counter()
    report = Report("precision: single ops (forward + backward)", params={"width": width, "tokens": tokens})
    table = Table(f"Ops at width {width}, {tokens} tokens", [
        Column("op", "op"), Column("fp32", "fp32 ms", "{:.2f}"), Column("bf16", "bf16 ms", "{:.2f}"),
        Column("speedup", "fp32 / bf16 (per round)", "{:.2f}x")])
    for name, make in _op_cases(width, tokens, device).items():
        variants = {"fp32": make(torch.float32), "bf16": make(torch.bfloat16)}
        many = {k: (lambda f=f: [f() for _ in range(5)]) for k, f in variants.items()}  # 5 calls per timing
        times = interleaved(many, warmup=1, repeats=repeats)
        table.rows.append({"op": name, "fp32": 1e3 * median(times["fp32"]) / 5, "bf16": 1e3 * median(times["bf16"]) / 5,
                           "speedup": ratio(times, "fp32", "bf16")})
    report.tables.append(table)
    report.seconds = time.perf_counter() - t_start
    return report


# -- profile --------------------------------------------------------------------------------------------

PROFILED = ("fp32", "bf16", "bf16 + fp32 pool + matmul attn")


def run_profile(width: int, *, depth: int, n_images: int, seq_len: int, seed: int, device: torch.device,
                variants: tuple[str, ...] = PROFILED, top: int = 12) -> Report:
    from torch.profiler import ProfilerActivity, profile

    t_start = time.perf_counter()
    patch = 16
    sizes = sample_sizes(n_images, seed=seed + 2, side=(64, 256), patch=patch)
    images, labels = make_images(sizes, seed=seed), torch.randint(0, 10, (n_images,))
    report = Report(f"precision: top ops of one step at width {width}")
    for v in variants:
        step = make_step(v, model_config(width, depth, 10, patch), images, labels, patch, seq_len, seed, device)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        table = Table(f"{v}: self CPU time, {total / 1e3:.0f} ms in all", [
            Column("op", "op"), Column("ms", "self ms", "{:.1f}"), Column("share", "share", "{:.0%}"),
            Column("calls", "calls")])
        for e in events[:top]:
            table.rows.append({"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                               "calls": e.count})
        report.tables.append(table)
    report.seconds = time.perf_counter() - t_start
    return report


# -- agreement ------------------------------------------------------------------------------------------

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: a difference on the scale of the reference."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def _norm_rel(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all gradient tensors together."""
    num = sum(float((a[n].float() - b[n].float()).square().sum()) for n in b)
    return math.sqrt(num / max(sum(float(b[n].float().square().sum()) for n in b), 1e-30))


def isolation(seed: int = 0, width: int = 64) -> Table:
    """An example's logits and the weight gradients of its loss, alone and packed with others, per variant;
    beside it each low-precision variant's own distance from fp32 (the same example alone)."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(3, 96, 64, generator=gen)
    others = [torch.randn(3, 16 * int(torch.randint(1, 7, (), generator=gen)),
                          16 * int(torch.randint(1, 7, (), generator=gen)), generator=gen) for _ in range(9)]
    cfg = model_config(width, 2, 10, 16)
    cfg["heads"] = 2
    weight = torch.randn(10, generator=gen)
    table = Table("Isolation: one example alone vs packed with 9 others (max |diff| / max |value|; grads: "
                  "worst tensor, and ||diff|| / ||grads|| over all)", [
        Column("variant", "variant"), Column("logits", "logits: packed vs alone", "{:.1e}"),
        Column("grads", "grads: packed vs alone, worst", "{:.1e}"), Column("worst", "worst tensor"),
        Column("gnorm", "grads: packed vs alone, all", "{:.1e}"),
        Column("logits_fp32", "logits: vs fp32", "{:.1e}"), Column("grads_fp32", "grads: vs fp32, worst", "{:.1e}"),
        Column("gnorm_fp32", "grads: vs fp32, all", "{:.1e}")])
    ref = None
    for v in VARIANTS:
        model, dtype, autocast = build_variant(v, cfg, seed)
        results = []
        for samples, idx in (([target], 0), (others[:4] + [target] + others[4:], 4)):
            b = mmvit.pack(samples, patch_size=16, seq_len=256)
            b = dataclasses.replace(b, patches=b.patches.to(dtype))
            e = b.example_ids.tolist().index(idx)
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(b)[e]
            (out.float() * weight).sum().backward()
            results.append((out.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters()
                                                    if p.grad is not None}))
        (alone, ga), (packed, gp) = results
        worst = max(ga, key=lambda n: _rel(gp[n], ga[n]))
        row = {"variant": v, "logits": _rel(packed, alone), "grads": _rel(gp[worst], ga[worst]), "worst": worst,
               "gnorm": _norm_rel(gp, ga)}
        if ref is None:
            ref = results[0]
        else:
            row["logits_fp32"] = _rel(alone, ref[0])
            row["grads_fp32"] = max(_rel(ga[n], ref[1][n]) for n in ref[1])
            row["gnorm_fp32"] = _norm_rel(ga, ref[1])
        table.rows.append(row)
    return table


def loss_curves(steps: int, seed: int = 0, width: int = 64) -> tuple[Table, dict]:
    """``steps`` AdamW steps of a small NaViT on a learnable synthetic task, same data and initial weights in
    every variant; the loss curves' distance from fp32."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 3, 1, 1, generator=gen)  # class = a colour shift, learnable in few steps
    cfg = model_config(width, 2, 10, 16)
    cfg["heads"] = 2

    def batch(step: int):
        g = torch.Generator().manual_seed(seed * 100003 + step)
        labels = torch.randint(0, 10, (12,), generator=g)
        sides = torch.randint(2, 9, (12, 2), generator=g) * 16
        imgs = [torch.randn(3, int(h), int(w), generator=g) + 0.15 * protos[int(y)]
                for (h, w), y in zip(sides.tolist(), labels)]
        return mmvit.pack(imgs, patch_size=16, seq_len=256, labels=labels)

    batches = [batch(s) for s in range(steps)]
    curves = {}
    for v in ("fp32, bf16-rounded init", *VARIANTS):
        model, dtype, autocast = build_variant(v.split(",")[0], cfg, seed)
        if v == "fp32, bf16-rounded init":  # the trajectory's own sensitivity: start 1 bf16 rounding away
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.bfloat16().float())
        model.train()
        opt = MasterAdamW(list(model.parameters()), 1e-3) if dtype != torch.float32 else \
            torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for b in batches:
            b = dataclasses.replace(b, patches=b.patches.to(dtype))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(b)
            loss = F.cross_entropy(logits.float(), b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        curves[v] = losses
    ref = torch.tensor(curves["fp32"])
    table = Table(f"Loss curves, {steps} steps (fp32: {ref[0]:.3f} -> {ref[-10:].mean():.3f}, mean of last 10)", [
        Column("variant", "variant"), Column("max_abs", "max |loss - fp32 loss|", "{:.4f}"),
        Column("mean_abs", "mean |loss - fp32 loss|", "{:.4f}"), Column("max_rel", "max relative", "{:.2%}"),
        Column("last10", "mean of last 10", "{:.4f}")])
    for v, c in curves.items():
        t = torch.tensor(c)
        table.rows.append({"variant": v, "max_abs": float((t - ref).abs().max()),
                           "mean_abs": float((t - ref).abs().mean()),
                           "max_rel": float(((t - ref).abs() / ref.abs()).max()), "last10": float(t[-10:].mean())})
    return table, curves


def run_check(steps: int, seed: int) -> Report:
    t_start = time.perf_counter()
    report = Report("precision: agreement with fp32", params={"threads": torch.get_num_threads()})
    report.tables.append(isolation(seed))
    table, curves = loss_curves(steps, seed)
    report.tables.append(table)
    report.raw["loss_curves"] = curves
    report.notes.append("fp32, bf16-rounded init: fp32 training from the bf16-rounded initial weights, the "
                        "trajectory's own sensitivity to one bf16 rounding (a yardstick for the other rows).")
    report.seconds = time.perf_counter() - t_start
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="step,ops,profile,check")
    p.add_argument("--widths", type=int, nargs="+", default=[192, 384, 768])
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=90.0, help="stop a width's rounds after this long (min 3)")
    p.add_argument("--check-steps", type=int, default=100)
    p.add_argument("--threads", type=int)
    p.add_argument("--tiny", action="store_true", help="toy sizes (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.tiny:
        a.widths, a.depth, a.images, a.seq_len, a.repeats, a.check_steps = [64], 1, 6, 256, 2, 5
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, {info['threads']} threads, "
          f"load average {info.get('load_average_1min')} at start; bf16: {json.dumps(bf16_capability())}")
    t0, reports = time.perf_counter(), []
    parts = a.parts.split(",")
    if "step" in parts:
        reports.append(run_steps(a.widths, depth=a.depth, n_images=a.images, seq_len=a.seq_len, repeats=a.repeats,
                                 seed=a.seed, square=256 if a.tiny else 2048, device=device, budget_s=a.budget_s))
    if "ops" in parts:
        reports.append(run_ops(a.widths[min(1, len(a.widths) - 1)], 64 * 8 if a.tiny else 3200, a.repeats, device))
    if "profile" in parts:
        reports.append(run_profile(a.widths[min(1, len(a.widths) - 1)], depth=a.depth, n_images=a.images,
                                   seq_len=a.seq_len, seed=a.seed, device=device))
    if "check" in parts:
        reports.append(run_check(a.check_steps, a.seed))
    for r in reports:
        print()
        print(r.markdown())
    end = machine_info().get("load_average_1min")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {end} at the end")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"machine": info, "bf16": bf16_capability(), "load_average_end": end,
                       "reports": [r.to_json() for r in reports]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

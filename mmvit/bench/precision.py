"""The packed training step in fp32 against bf16, at ViT-Ti/S/B widths, against each precision's matmul peak.

    python tools/benchmark.py step --precision fp32,bf16 [--widths 192,384,768] [--threads 1]

Per width (heads 3/6/12, MLP 4x, ``depth`` blocks, patch 16, NaViT's resolution mix packed into rows of
``seq_len``), one training step per precision on the same images, from the same initial weights:

- ``fp32``: fp32 weights and compute, torch's AdamW.
- ``bf16``: what ``train.precision: bf16`` trains with (DeepSpeed's ``bf16`` section): bf16 weights and
  patches, the model's own fp32 islands (pooling sums, softmaxes, position angles; the CPU attention's
  matmul path), the loss in fp32, and AdamW on fp32 master copies of the weights, copied back after each
  update (DeepSpeed's ``FP16_UnfusedOptimizer`` at ZeRO-0; ZeRO 1-2 keep the same fp32 copies partitioned).
- ``autocast`` (on request): fp32 weights under ``torch.autocast(device, bfloat16)``, what DeepSpeed's
  ``torch_autocast`` section does.

A square matmul in fp32 and in bf16 runs in the same interleaved rounds: each variant's GFLOP/s is divided by
the peak of its own compute precision. A second table times the trunk's single ops (forward + backward) in
both precisions, which says where bf16 gains and where it does not (SDPA's CPU kernel, elementwise ops).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import mmvit
from mmvit.bench.common import Column, Report, Table, interleaved, median, ratio
from mmvit.bench.images import make_images, sample_sizes, token_counts
from mmvit.bench.step import train_flops
from mmvit.models.attention import attention_matmul
from mmvit.models.pooling import segment_softmax

PRECISIONS = ("fp32", "bf16", "autocast")
HEADS = {192: 3, 384: 6, 768: 12}


class MasterAdamW:
    """AdamW on fp32 master copies of low-precision weights: gradients are copied up to fp32 before the
    update and the updated masters rounded back into the weights (DeepSpeed's bf16 scheme)."""

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
            p.copy_(m)


def model_config(width: int, depth: int, classes: int, patch: int) -> dict:
    return {"type": "navit", "width": width, "depth": depth, "heads": HEADS.get(width, max(1, width // 64)),
            "mlp_dim": 4 * width, "patch_size": patch, "num_classes": classes,
            "head": {"type": "linear", "zero_init": False}}


def make_step(precision: str, model_cfg: dict, images: list[torch.Tensor], labels: torch.Tensor, patch: int,
              seq_len: int, seed: int, device: torch.device) -> Callable[[], float]:
    """One training step (pack, cast patches, forward, fp32 cross-entropy, backward, AdamW); returns the loss."""
    torch.manual_seed(seed)
    model = mmvit.build_model(model_cfg).to(device).train()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if dtype != torch.float32:
        model = model.to(dtype)
        opt = MasterAdamW(list(model.parameters()), 1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = precision == "autocast"

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


def step_table(widths: list[int], precisions: list[str], *, depth: int, n_images: int, seq_len: int,
               repeats: int, seed: int, square: int, device: torch.device, budget_s: float | None,
               report: Report) -> Table:
    patch, classes = 16, 10
    sizes = sample_sizes(n_images, seed=seed + 2, side=(64, 256), patch=patch)
    images = make_images(sizes, seed=seed)
    lengths = token_counts(sizes, patch)
    labels = torch.randint(0, classes, (n_images,), generator=torch.Generator().manual_seed(seed))
    report.params.update(depth=depth, images=n_images, seq_len=seq_len, tokens=sum(lengths), patch=patch,
                         square=square)
    a32, w32 = torch.randn(square, square, device=device), torch.randn(square, square, device=device)
    a16, w16 = a32.bfloat16(), w32.bfloat16()
    base = precisions[0]
    table = Table(f"Training step (forward, backward, AdamW), {n_images} images, {sum(lengths)} tokens, depth {depth}",
                  [Column("width", "width"), Column("variant", "precision"), Column("ms", "median ms", "{:.0f}"),
                   Column("rate", "examples/s", "{:.1f}"),
                   Column("speedup", f"{base} time / time (per round)", "{:.2f}x"),
                   Column("gflops", "model GFLOP/s", "{:.0f}"), Column("util", "of own-precision peak", "{:.0%}")])
    for width in widths:
        cfg = model_config(width, depth, classes, patch)
        variants: dict[str, Callable] = {p: make_step(p, cfg, images, labels, patch, seq_len, seed, device)
                                         for p in precisions}
        variants["matmul fp32"] = lambda: a32 @ w32
        variants["matmul bf16"] = lambda: a16 @ w16
        times = interleaved(variants, warmup=1, repeats=repeats, budget_s=budget_s)
        peak = {p: 2 * square ** 3 / median(times[f"matmul {p}"]) for p in ("fp32", "bf16")}
        flops = train_flops(lengths, width=width, depth=depth, mlp_dim=4 * width, patch_dim=3 * patch * patch,
                            num_classes=classes)
        for p in precisions:
            m = median(times[p])
            own = "fp32" if p == "fp32" else "bf16"
            table.rows.append({"width": width, "variant": p, "ms": 1e3 * m, "rate": n_images / m,
                               "speedup": ratio(times, base, p), "gflops": flops / m / 1e9,
                               "util": flops / m / peak[own]})
        for p in ("fp32", "bf16"):
            table.rows.append({"width": width, "variant": f"matmul {square}^3 {p}", "gflops": peak[p] / 1e9})
        report.raw[str(width)] = times
        report.params[f"gflop_per_step_{width}"] = flops / 1e9
    return table


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

    def matmul_attention(dtype):
        q, k, v = (mk((groups, h, length, d), dtype) for _ in range(3))
        return lambda: attention_matmul(q, k, v).sum().backward()

    def gelu(dtype):
        x = mk((tokens, 4 * width), dtype)
        return lambda: F.gelu(x).sum().backward()

    def pool_softmax(dtype):
        s = mk((tokens, h), dtype)
        seg = torch.arange(tokens, device=device) * 32 // tokens
        return lambda: segment_softmax(s, seg, 32).sum().backward()

    return {f"linear [{tokens},{width}]x[{width},{4 * width}]": linear, f"layer_norm [{tokens},{width}]": layer_norm,
            f"SDPA [{groups},{h},{length},{d}]": sdpa,
            f"matmul attention, fp32 softmax [{groups},{h},{length},{d}]": matmul_attention,
            f"gelu [{tokens},{4 * width}]": gelu, f"segment_softmax [{tokens},{h}]": pool_softmax}


def ops_table(width: int, tokens: int, repeats: int, device: torch.device) -> Table:
    table = Table(f"Single ops at width {width}, {tokens} tokens (forward + backward)", [
        Column("op", "op"), Column("fp32", "fp32 ms", "{:.2f}"), Column("bf16", "bf16 ms", "{:.2f}"),
        Column("speedup", "fp32 / bf16 (per round)", "{:.2f}x")])
    for name, make in _op_cases(width, tokens, device).items():
        variants = {"fp32": make(torch.float32), "bf16": make(torch.bfloat16)}
        many = {k: (lambda f=f: [f() for _ in range(5)]) for k, f in variants.items()}  # 5 calls per timing
        times = interleaved(many, warmup=1, repeats=repeats)
        table.rows.append({"op": name, "fp32": 1e3 * median(times["fp32"]) / 5,
                           "bf16": 1e3 * median(times["bf16"]) / 5, "speedup": ratio(times, "fp32", "bf16")})
    return table


def run(tiny: bool = False, repeats: int = 3, seed: int = 0, precisions: list[str] | None = None,
        widths: list[int] | None = None, depth: int = 4, budget_s: float = 90.0) -> Report:
    from mmvit.train.precision import bf16_support, cpu_flags

    t_start = time.perf_counter()
    precisions = list(precisions or ["fp32", "bf16"])
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"--precision: unknown {unknown}; choose from {PRECISIONS}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    widths = widths or ([64] if tiny else [192, 384, 768])
    n_images, seq_len, square = (6, 256, 256) if tiny else (32, 1024, 2048)
    depth = 1 if tiny else depth
    native, why = bf16_support(device)
    report = Report("step precision", params={"precisions": precisions, "widths": widths, "device": str(device),
                                              "threads": torch.get_num_threads(), "cpu_bf16_flags": cpu_flags(),
                                              "native_bf16": native})
    report.notes.append(f"bf16 on this machine: {why}.")
    table = step_table(widths, precisions, depth=depth, n_images=n_images, seq_len=seq_len, repeats=repeats,
                       seed=seed, square=square, device=device, budget_s=None if tiny else budget_s, report=report)
    report.tables.append(table)
    report.tables.append(ops_table(widths[min(1, len(widths) - 1)], 512 if tiny else 3200, repeats, device))
    report.notes.append("bf16: bf16 weights with fp32 master copies (train.precision: bf16); autocast: fp32 weights "
                        "under bf16 autocast; the loss is fp32 in every variant. Util: model FLOPs/s "
                        "(mmvit.bench.step.train_flops) over the square matmul of the variant's compute precision, "
                        "measured in the same rounds.")
    rows = {(r["width"], r["variant"]): r for r in table.rows}
    if "fp32" in precisions and "bf16" in precisions:
        from mmvit.bench.common import Bar

        s = 384 if 384 in widths else widths[len(widths) // 2]
        b = 768 if 768 in widths else widths[-1]
        report.bars.append(Bar(f"bf16 step / fp32 step at width {s} (target on AMX CPUs)",
                               rows[(s, "bf16")]["speedup"], ">=", 2.5))
        report.bars.append(Bar(f"bf16 step GFLOP/s / bf16 matmul peak at width {b}", rows[(b, "bf16")]["util"],
                               ">=", 0.6))
    report.seconds = time.perf_counter() - t_start
    return report

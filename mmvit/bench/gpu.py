"""CUDA only (skipped otherwise): the ``xformers`` backend against ``dense`` and ``segments`` in bf16, and the
training step's model FLOP utilization against a bf16 matmul peak measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mmvit.bench.attention import row_lengths, segment_ids
from mmvit.bench.common import Column, Report, Table, interleaved, median
from mmvit.bench.images import make_images, sample_sizes, token_counts
from mmvit.bench.step import FLOP_FORMULA, train_flops
from mmvit.models import xformers_ops
from mmvit.models.attention import attend_dense, attend_segments, attend_xformers
from mmvit.models.layout import build_layout

FUNCS = {"xformers": attend_xformers, "segments": attend_segments, "dense": attend_dense}


def _synced(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def _peak_bytes(fn: Callable[[], object]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def run(tiny: bool = False, repeats: int = 10, seed: int = 0) -> Report:
    t_start = time.perf_counter()
    report = Report("gpu")
    if not torch.cuda.is_available():
        report.skipped = "no CUDA device"
        return report
    if not xformers_ops.available():
        report.skipped = "xformers is not installed (pip install --no-deps xformers==0.0.35)"
        return report
    dev, dtype = torch.device("cuda"), torch.bfloat16
    report.params.update(device=torch.cuda.get_device_name(0), dtype="bfloat16")
    heads, head_dim = (2, 32) if tiny else (12, 64)
    configs = [(256, 4)] if tiny else [(4096, 4), (4096, 16), (16384, 16), (16384, 64)]
    table = Table(f"Attention forward + backward, bf16, {heads} heads of {head_dim}", [
        Column("L", "L"), Column("E", "examples"), Column("variant", "variant"), Column("ms", "median ms", "{:.2f}"),
        Column("vs_dense", "dense / this", "{:.2f}x"), Column("vs_segments", "segments / this", "{:.2f}x"),
        Column("mib", "peak MiB", "{:.0f}")])
    rng = np.random.default_rng(seed)
    names = ("xformers", "segments", "dense")
    for length, e in configs:
        seg = segment_ids([row_lengths(length, e, rng)], length).to(dev)
        base = [torch.randn(length, heads, head_dim, device=dev, dtype=dtype) for _ in range(4)]
        inputs = {n: [t.clone().requires_grad_() for t in base[:3]] for n in names}

        def step(n: str, seg: torch.Tensor = seg, inputs: dict = inputs, base: list = base) -> None:
            layout = build_layout(seg)
            q, k, v = inputs[n]
            FUNCS[n](q, k, v, layout).backward(base[3])
            for t in inputs[n]:
                t.grad = None

        times = interleaved({n: _synced(lambda n=n: step(n)) for n in names}, warmup=2, repeats=repeats)
        ms = {n: 1e3 * median(t) for n, t in times.items()}
        for n in names:
            table.rows.append({"L": length, "E": e, "variant": n, "ms": ms[n], "vs_dense": ms["dense"] / ms[n],
                               "vs_segments": ms["segments"] / ms[n], "mib": _peak_bytes(lambda n=n: step(n)) / 2**20})
    report.tables.append(table)

    import mmvit

    cfg = ({"width": 64, "depth": 1, "heads": 2, "mlp_dim": 128, "patch_size": 16} if tiny else
           {"width": 768, "depth": 12, "heads": 12, "mlp_dim": 3072, "patch_size": 16})
    n_images = 8 if tiny else 256
    sizes = sample_sizes(n_images, seed=seed + 2)
    images = make_images(sizes, seed=seed)
    lengths = token_counts(sizes)
    labels = torch.randint(0, 10, (n_images,))
    model = mmvit.build_model({"type": "navit", **cfg, "num_classes": 10, "attention": "xformers"}).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    # Packed once, outside the timed step: in training the loader workers pack while the GPU computes.
    batch = mmvit.pack(images, patch_size=16, seq_len=1024, labels=labels).to(dev)

    def train_step() -> None:
        b = batch
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(b).float(), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    square = 1024 if tiny else 8192
    a = torch.randn(square, square, device=dev, dtype=dtype)
    times = interleaved({"step": _synced(train_step), "matmul": _synced(lambda: a @ a)}, warmup=2, repeats=repeats)
    flops = train_flops(lengths, width=cfg["width"], depth=cfg["depth"], mlp_dim=cfg["mlp_dim"],
                        patch_dim=3 * 16 * 16, num_classes=10)
    peak = 2 * square**3 / median(times["matmul"])
    achieved = flops / median(times["step"])
    report.tables.append(Table(f"Training step, bf16 autocast, xformers, {n_images} images", [
        Column("what", "what"), Column("ms", "median ms", "{:.1f}"), Column("tflops", "TFLOP/s", "{:.1f}")], rows=[
        {"what": f"mmvit step (width {cfg['width']}, depth {cfg['depth']})", "ms": 1e3 * median(times["step"]),
         "tflops": achieved / 1e12},
        {"what": f"bf16 matmul {square}^3", "ms": 1e3 * median(times["matmul"]), "tflops": peak / 1e12}]))
    report.params["mfu"] = achieved / peak
    report.notes.append(f"Model FLOP utilization {achieved / peak:.0%} (step model FLOPs / bf16 matmul peak). "
                        f"FLOPs per step: {FLOP_FORMULA}. The batch is packed once, outside the timed step.")
    report.seconds = time.perf_counter() - t_start
    return report


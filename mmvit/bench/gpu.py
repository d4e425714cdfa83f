"""CUDA only (skipped otherwise): the attention backends in bf16, forward and backward, and the packed ViT-B/16
training step's model FLOP utilization (MFU) against a bf16 matmul peak measured in the same run.

- Attention: one packed row of ``L`` tokens split at random into ``E`` examples, 12 heads of 64 (ViT-B),
  bf16, forward and backward with a fixed upstream gradient. Variants: ``xformers`` (memory_efficient_attention
  with a BlockDiagonalMask), ``flex`` (FlexAttention, compiled, document BlockMask), ``segments`` (one SDPA
  call per distinct length), ``dense`` (one SDPA call with the ``[L, L]`` boolean mask). The layout, and
  with it each backend's mask, is built inside the timed call, once, as a forward builds it for all its
  blocks. FlexAttention's first call per padded length compiles; that time is reported apart and not timed.
- Step: ViT-B/16 (width 768, depth 12, 12 heads, MLP 3072) on 256 images at NaViT's resolution sampling
  (side ``r ~ U(64, 256)``, patch 16, mmvit/bench/images.py), packed into rows of 1,024 tokens once outside
  the timed step (in training the loader workers pack while the GPU computes); forward, cross-entropy,
  backward and fused AdamW under bf16 autocast, for each fast backend. MFU = model FLOPs per step
  (``FLOP_FORMULA``, mmvit/bench/step.py) / step time / the peak of a bf16 matmul timed in the same rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mmvit.bench.attention import row_lengths, segment_ids
from mmvit.bench.common import Column, Report, Table, interleaved, median, ratio
from mmvit.bench.images import make_images, sample_sizes, token_counts
from mmvit.bench.step import FLOP_FORMULA, train_flops
from mmvit.models import flex_attention, xformers_ops
from mmvit.models.attention import attend_dense, attend_flex, attend_segments, attend_xformers
from mmvit.models.layout import build_layout

FUNCS = {"xformers": attend_xformers, "flex": attend_flex, "segments": attend_segments, "dense": attend_dense}


def _synced(fn: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return call


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def usable_backends(device: torch.device) -> tuple[list[str], list[str]]:
    """Backends that run here, and a note for each that does not."""
    names, notes = [], []
    flex_why = flex_attention.available() or (None if device.type == "cuda" else flex_attention.CPU_REFUSAL)
    for name, why in (("xformers", xformers_ops.kernels_usable(device)), ("flex", flex_why)):
        if why is None:
            names.append(name)
        else:
            notes.append(f"{name}: skipped, {why}")
    return names + ["segments", "dense"], notes


def _first_call(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attention_table(names: list[str], configs: list[tuple[int, int]], heads: int, head_dim: int, repeats: int,
                    seed: int, budget_s: float, dev: torch.device) -> tuple[Table, dict]:
    dtype = torch.bfloat16
    table = Table(f"Attention forward + backward, bf16, {heads} heads of {head_dim}", [
        Column("L", "L"), Column("E", "examples"), Column("variant", "variant"), Column("ms", "median ms", "{:.2f}"),
        Column("vs_dense", "dense / this", "{:.2f}x"), Column("vs_segments", "segments / this", "{:.2f}x"),
        Column("mib", "peak MiB", "{:.0f}"), Column("first_s", "first call s", "{:.1f}")])
    raw = {}
    rng = np.random.default_rng(seed)
    for length, e in configs:
        seg = segment_ids([row_lengths(length, e, rng)], length).to(dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        base = [torch.randn(length, heads, head_dim, device=dev, dtype=dtype, generator=gen) for _ in range(4)]
        inputs = {n: [t.clone().requires_grad_() for t in base[:3]] for n in names}

        def step(n: str, seg: torch.Tensor = seg, inputs: dict = inputs, base: list = base) -> None:
            layout = build_layout(seg)  # per call, as in a forward: each backend's mask is built once here
            q, k, v = inputs[n]
            FUNCS[n](q, k, v, layout).backward(base[3])
            for t in inputs[n]:
                t.grad = None

        calls = {n: _synced(lambda n=n: step(n)) for n in names}
        first = {n: _first_call(calls[n]) for n in names}  # FlexAttention compiles here
        times = interleaved(calls, warmup=1, repeats=repeats, budget_s=budget_s)
        ms = {n: 1e3 * median(t) for n, t in times.items()}
        raw[f"L{length}_E{e}"] = {"seconds_per_round": times, "first_call_s": first}
        for n in names:
            table.rows.append({"L": length, "E": e, "variant": n, "ms": ms[n], "vs_dense": ms["dense"] / ms[n],
                               "vs_segments": ms["segments"] / ms[n],
                               "mib": (_peak_bytes(lambda n=n: step(n), dev) or 0) / 2**20, "first_s": first[n]})
    return table, raw


def run(tiny: bool = False, repeats: int = 10, seed: int = 0, budget_s: float = 8.0, device: str | None = None
        ) -> Report:
    """``device``: None is CUDA, or a skip without it; ``"cpu"`` runs the same code on the CPU (the test suite's
    stand-in: tiny sizes, segments and dense, nothing to compare with a GPU)."""
    t_start = time.perf_counter()
    report = Report("gpu")
    if device is None and not torch.cuda.is_available():
        report.skipped = f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})"
        return report
    dev, dtype = torch.device(device or "cuda"), torch.bfloat16
    names, notes = usable_backends(dev)
    report.notes += notes
    report.params.update(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (stand-in)",
                         dtype="bfloat16", torch=torch.__version__, cuda=torch.version.cuda, backends=names)
    heads, head_dim = (2, 32) if tiny else (12, 64)
    configs = [(256, 4)] if tiny else [(4096, 4), (4096, 16), (16384, 16), (16384, 64)]
    table, raw = attention_table(names, configs, heads, head_dim, repeats, seed, budget_s, dev)
    report.tables.append(table)
    report.raw["attention"] = raw

    import mmvit

    cfg = ({"width": 64, "depth": 1, "heads": 2, "mlp_dim": 128, "patch_size": 16} if tiny else
           {"width": 768, "depth": 12, "heads": 12, "mlp_dim": 3072, "patch_size": 16})
    n_images = 8 if tiny else 256
    sizes = sample_sizes(n_images, seed=seed + 2, side=(64, 256), patch=16)
    images = make_images(sizes, seed=seed)
    lengths = token_counts(sizes, 16)
    labels = torch.randint(0, 10, (n_images,), generator=torch.Generator().manual_seed(seed))
    # Packed once, outside the timed step: in training the loader workers pack while the GPU computes.
    batch = mmvit.pack(images, patch_size=16, seq_len=1024, labels=labels).to(dev)
    step_names = [n for n in names if n != "dense"]  # dense's [N, N] mask over 26k tokens is not a contender

    def trainer(backend: str) -> Callable[[], None]:
        torch.manual_seed(seed)
        model = mmvit.build_model({"type": "navit", **cfg, "num_classes": 10, "attention": backend}).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")

        def train_step() -> None:
            with torch.autocast(dev.type, dtype=dtype):
                loss = F.cross_entropy(model(batch).float(), batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return _synced(train_step)

    square = 1024 if tiny else 8192
    a = torch.randn(square, square, device=dev, dtype=dtype)
    variants = {f"step {n}": trainer(n) for n in step_names}
    first = {k: _first_call(f) for k, f in variants.items()}
    variants["matmul"] = _synced(lambda: a @ a)
    times = interleaved(variants, warmup=1, repeats=repeats, budget_s=2 * budget_s)
    flops = train_flops(lengths, width=cfg["width"], depth=cfg["depth"], mlp_dim=cfg["mlp_dim"],
                        patch_dim=3 * 16 * 16, num_classes=10)
    peak = 2 * square**3 / median(times["matmul"])
    rows = []
    for n in step_names:
        achieved = flops / median(times[f"step {n}"])
        report.params[f"mfu_{n}"] = achieved / peak
        rows.append({"what": f"step, {n}", "ms": 1e3 * median(times[f"step {n}"]), "tflops": achieved / 1e12,
                     "mfu": achieved / peak, "first_s": first[f"step {n}"]})
    rows.append({"what": f"bf16 matmul {square}^3", "ms": 1e3 * median(times["matmul"]), "tflops": peak / 1e12})
    report.tables.append(Table(
        f"Training step, bf16 autocast, width {cfg['width']}, depth {cfg['depth']}, {n_images} images, "
        f"{sum(lengths)} tokens in {batch.segment_ids.shape[0]} rows of 1024", [
            Column("what", "what"), Column("ms", "median ms", "{:.1f}"), Column("tflops", "TFLOP/s", "{:.1f}"),
            Column("mfu", "MFU", "{:.0%}"), Column("first_s", "first call s", "{:.1f}")], rows=rows))
    report.raw["step"] = {"seconds_per_round": times, "first_call_s": first}
    report.params["model_gflop_per_step"] = flops / 1e9
    report.notes.append(f"MFU: step model FLOPs / step time / bf16 matmul peak (same rounds). FLOPs per step "
                        f"{flops / 1e9:.0f} G = {FLOP_FORMULA}. The batch is packed once, outside the timed step.")
    report.notes.append("'first call s': the untimed first call; for flex it includes torch.compile of "
                        "FlexAttention (once per padded length and dtype), later calls reuse it.")
    report.seconds = time.perf_counter() - t_start
    return report


def flex_cpu_report(repeats: int = 7, seed: int = 0, tiny: bool = False) -> Report:
    """Whether FlexAttention could serve CPU inference: compiled (static padded length, as the backend runs it)
    against ``segments``, with ``dense`` as the exact reference; float32, no grad, 12 heads of 64, one packed
    batch of NaViT-mix images at patch 16 per configuration, the layout built inside each call.

    ``python -m mmvit.bench.gpu flex-cpu`` (docs/benchmarks.md, GPU section, holds the figures behind
    ``flex_attention.CPU_REFUSAL``).
    """
    import warnings

    from mmvit.packing import first_fit_decreasing

    t_start = time.perf_counter()
    heads, head_dim = (2, 16) if tiny else (12, 64)
    configs = [(16, 256)] if tiny else [(20, 1024), (80, 1024)]  # (images, seq_len): about 2 and 8 rows
    report = Report("flex-cpu", params={"heads": heads, "head_dim": head_dim, "dtype": "float32",
                                        "threads": torch.get_num_threads(), "torch": torch.__version__})
    table = Table("FlexAttention forward on the CPU (compiled) against segments, float32, no grad", [
        Column("rows", "rows x L"), Column("N", "tokens"), Column("E", "examples"),
        Column("seg_ms", "segments ms", "{:.1f}"), Column("flex_ms", "flex ms", "{:.1f}"),
        Column("ratio", "segments / flex (per round)", "{:.2f}x"), Column("compile_s", "flex first call s", "{:.0f}"),
        Column("flex_err", "flex max error vs dense", "{:.1e}"), Column("seg_err", "segments max error", "{:.1e}")])
    for n_images, seq_len in configs:
        lengths = token_counts(sample_sizes(n_images, seed=seed + 3, side=(64, 256), patch=16), 16)
        rows = first_fit_decreasing(lengths, seq_len)
        seg = torch.zeros(len(rows), seq_len, dtype=torch.long)
        e = 1
        for r, idx in enumerate(rows):
            pos = 0
            for i in idx:
                seg[r, pos:pos + lengths[i]] = e
                pos, e = pos + lengths[i], e + 1
        layout = build_layout(seg)
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(layout.num_tokens, heads, head_dim, generator=gen) for _ in range(3))

        def flex_call(seg: torch.Tensor = seg, qkv: tuple = (q, k, v)) -> torch.Tensor:
            lay = build_layout(seg)  # per call, as a forward builds it
            return flex_attention.flex(*qkv, flex_attention.layout_block_mask(lay, qkv[0].device))

        def seg_call(seg: torch.Tensor = seg, qkv: tuple = (q, k, v)) -> torch.Tensor:
            return attend_segments(*qkv, build_layout(seg))

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = flex_call()
            compile_s = time.perf_counter() - t0
            ref = attend_dense(q, k, v, layout)
            errs = (float((out - ref).abs().max()), float((seg_call() - ref).abs().max()))
            times = interleaved({"segments": seg_call, "flex": flex_call}, warmup=1, repeats=repeats, budget_s=30.0)
        report.raw[f"{len(rows)}x{seq_len}"] = {"seconds_per_round": times, "first_call_s": compile_s}
        table.rows.append({"rows": f"{len(rows)} x {seq_len}", "N": layout.num_tokens, "E": layout.num_examples,
                           "seg_ms": 1e3 * median(times["segments"]), "flex_ms": 1e3 * median(times["flex"]),
                           "ratio": ratio(times, "segments", "flex"), "compile_s": compile_s,
                           "flex_err": errs[0], "seg_err": errs[1]})
    report.tables.append(table)
    report.seconds = time.perf_counter() - t_start
    return report


if __name__ == "__main__":
    import argparse
    import json

    from mmvit.bench.common import machine_info

    parser = argparse.ArgumentParser(description="python -m mmvit.bench.gpu flex-cpu [--threads N] [--out F]")
    parser.add_argument("what", choices=["flex-cpu"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, {info['threads']} threads, "
          f"load average {info.get('load_average_1min')} at start")
    rep = flex_cpu_report(repeats=args.repeats)
    print(rep.markdown())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "report": rep.to_json()}, f, indent=1)

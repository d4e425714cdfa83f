"""One pretraining step (mask planning, masked packing, forward, loss, backward, AdamW) against the supervised
step, on the same mixed-resolution images and clips, in one process.

Variants, all with the same encoder (width, depth, heads, 2 x p x p tubelets):

- ``supervised``: ``mmvit.pack`` into ``seq_len`` rows, the classification objective.
- ``mae r``: every example masked at ratio ``r`` (images at random, clips in tubes; ``r = 0`` masks one
  token per example, the least a mask may), packed by :func:`mmvit.pretrain.pack_masked`: the encoder on the
  visible tokens, the decoder on all of them.
- ``jepa``: the multiblock masks of the ``jepa`` preset, the predictor on all tokens and the EMA target
  encoder's forward on all tokens (plus the EMA update).

Both packings take as many rows as first-fit-decreasing needs (``num_rows=None``), so padding is what the
packer leaves, reported per packing. A square fp32 matmul runs in the same interleaved rounds and gives the
machine's peak for the GFLOP/s comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

import mmvit
from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median, ratio
from mmvit.bench.images import make_images, sample_sizes
from mmvit.objectives import build_objective
from mmvit.pretrain import MaskConfig, pack_masked, plan_masks

FLOP_FORMULA = (
    "per transformer of width D, MLP width M, depth K over T real tokens in examples of L_i tokens: forward "
    "F = 2 T K (4 D^2 + 2 D M) + 4 K D sum(L_i^2), training 3F; plus the patch embedding (4 T P D) and, for "
    "MAE, the decoder's input projection and pixel head (6 T_vis D W + 6 T_mask W P); JEPA adds the target "
    "encoder's forward (F over all tokens) and the predictor's head (6 T_mask W D); supervised adds MAP pooling "
    "and the head as in the step benchmark"
)


def transformer_flops(lengths: list[int], width: int, depth: int, mlp: int) -> float:
    """Forward FLOPs of ``depth`` blocks over examples of ``lengths`` tokens (matmuls only)."""
    t, s2 = sum(lengths), sum(n * n for n in lengths)
    return 2 * t * depth * (4 * width * width + 2 * width * mlp) + 4 * depth * width * s2


def _trainer(objective: torch.nn.Module, make_batch: Callable[[], mmvit.PackedBatch], ema: bool = False
             ) -> Callable[[], None]:
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        out = objective(make_batch())
        opt.zero_grad(set_to_none=True)
        out.losses.mean().backward()
        opt.step()
        if ema:
            objective.after_step(1, 100)

    return step


def run(tiny: bool = False, repeats: int = 5, seed: int = 0) -> Report:
    t_start = time.perf_counter()
    if tiny:
        enc = {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8}
        dec = {"width": 16, "depth": 1, "heads": 2, "mlp_dim": 32}
        n_images, n_videos, frames, side, seq_len, square = 6, 2, 4, (16, 48), 64, 256
    else:
        enc = {"width": 192, "depth": 4, "heads": 3, "mlp_dim": 768, "patch_size": 16}
        dec = {"width": 128, "depth": 2, "heads": 4, "mlp_dim": 512}
        n_images, n_videos, frames, side, seq_len, square = 24, 4, 8, (64, 256), 1024, 2048
    p = enc["patch_size"]
    ps = (2, p, p)
    images = make_images(sample_sizes(n_images, seed=seed + 2, side=side, patch=p), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    clips = [torch.randn(3, frames, h, w, generator=gen)
             for h, w in sample_sizes(n_videos, seed=seed + 3, side=side, patch=p)]
    samples = images + clips
    n = len(samples)
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))
    grids = [(1 if s.dim() == 3 else s.shape[1] // 2, s.shape[-2] // p, s.shape[-1] // p) for s in samples]
    lengths = [a * b * c for a, b, c in grids]
    report = Report("pretrain", params={**enc, "decoder": dec, "images": n_images, "videos": n_videos,
                                        "frames": frames, "side": list(side), "seq_len": seq_len,
                                        "tokens": sum(lengths), "optimizer": "AdamW",
                                        "threads": torch.get_num_threads()})
    model_cfg = {"type": "navit", **enc, "tokenizer": {"type": "tubelet", "frames": 2}, "pool": "map"}

    variants: dict[str, Callable[[], None]] = {}
    torch.manual_seed(seed)
    sup = build_objective({"type": "classification"}, mmvit.build_model({**model_cfg, "num_classes": 10}))
    variants["supervised"] = _trainer(sup, lambda: mmvit.pack(samples, patch_size=ps, seq_len=seq_len, labels=labels))

    shapes: dict[str, tuple[float, float, int, int]] = {"supervised": (mmvit.pack(
        samples, patch_size=ps, seq_len=seq_len).padding_fraction, float("nan"), sum(lengths), 0)}
    flops = {"supervised": 3 * transformer_flops(lengths, enc["width"], enc["depth"], enc["mlp_dim"])
             + 4 * sum(lengths) * 3 * 2 * p * p * enc["width"]}

    def masked(name: str, kind: str, mask: MaskConfig, cfg: dict) -> None:
        torch.manual_seed(seed)
        objective = build_objective({"type": kind, **cfg, "mask": None}, mmvit.build_model(model_cfg))

        def batch() -> mmvit.PackedBatch:
            vis = plan_masks(samples, ps, mask, np.random.default_rng(seed))
            return pack_masked(samples, vis, patch_size=ps, seq_len=seq_len, full_seq_len=seq_len)

        variants[name] = _trainer(objective, batch, ema=kind == "jepa")
        b = batch()
        vis_len = b.lengths.tolist()
        t_vis, t_all = sum(vis_len), sum(lengths)
        shapes[name] = (b.padding_fraction, b.full.padding_fraction, t_vis, t_all)
        w, d = enc["width"], cfg.get("decoder", cfg.get("predictor"))["width"]
        dk, dm = dec["depth"], dec["mlp_dim"]
        f = 3 * transformer_flops(vis_len, w, enc["depth"], enc["mlp_dim"]) + 4 * t_vis * 3 * 2 * p * p * w
        f += 3 * transformer_flops(lengths, d, dk, dm) + 6 * t_vis * w * d
        out = 3 * 2 * p * p if kind == "mae" else w
        f += 6 * (t_all - t_vis) * d * out
        if kind == "jepa":
            f += transformer_flops(lengths, w, enc["depth"], enc["mlp_dim"]) + 2 * t_all * 3 * 2 * p * p * w
        flops[name] = f

    for r in (0.0, 0.75, 0.9):
        mask = MaskConfig(preset="mae", image={"type": "random", "ratio": max(r, 1e-6)},
                          video={"type": "tube", "ratio": max(r, 1e-6)})
        masked(f"mae {r:g}", "mae", mask, {"decoder": dec})
    masked("jepa", "jepa", MaskConfig(preset="jepa"), {"predictor": dec})

    a = torch.randn(square, square)
    wm = torch.randn(square, square)
    variants["matmul peak"] = lambda: [a @ wm for _ in range(3)]
    times = interleaved(variants, warmup=1, repeats=repeats, budget_s=90.0 if not tiny else None)
    peak_times = times.pop("matmul peak")
    peak = 3 * 2 * square**3 / median(peak_times)
    report.params["rounds"] = len(peak_times)
    report.params["matmul_peak_gflops"] = peak / 1e9
    report.raw = {"seconds_per_round": {**times, "matmul peak": peak_times}}

    table = Table(f"Pretraining step, {n_images} images + {n_videos} clips of {frames} frames, {sum(lengths)} "
                  f"tokens", [
                      Column("variant", "variant"), Column("ms", "median ms", "{:.0f}"),
                      Column("rate", "examples/s", "{:.1f}"), Column("speed", "speed-up over mae 0", "{:.2f}x"),
                      Column("enc", "encoder tokens", "{}"), Column("pad_e", "padding (encoder)", "{:.1%}"),
                      Column("pad_f", "padding (full)", "{:.1%}"), Column("gflops", "model GFLOP/s", "{:.1f}"),
                      Column("util", "of matmul peak", "{:.0%}")])
    for name, t in times.items():
        m = median(t)
        pad_e, pad_f, t_vis, _ = shapes[name]
        row = {"variant": name, "ms": 1e3 * m, "rate": n / m, "speed": ratio(times, "mae 0", name), "enc": t_vis,
               "pad_e": pad_e, "gflops": flops[name] / m / 1e9, "util": flops[name] / m / peak}
        if pad_f == pad_f:
            row["pad_f"] = pad_f
        table.rows.append(row)
    table.rows.append({"variant": f"matmul peak ({square}^3 fp32)", "gflops": peak / 1e9})
    report.tables.append(table)
    report.bars.append(Bar("mae 0.9 step vs mae 0 (videos and images at 90%)", ratio(times, "mae 0", "mae 0.9"),
                           ">=", 3.0))
    report.notes.append(f"Model FLOPs: {FLOP_FORMULA}. Mask planning and both packings are inside the timed step.")
    report.seconds = time.perf_counter() - t_start
    return report

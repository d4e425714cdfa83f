"""One pretraining step (mask planning, masked packing, forward, loss, backward, AdamW) against the supervised
step, on the same mixed-resolution images and clips, in one process.

Variants, all with the same encoder (width, depth, heads, 2 x p x p tubelets):

- ``supervised``: ``mmvit.pack`` into ``seq_len`` rows, the classification objective.
- ``mae r``: every example masked at ratio ``r`` (images at random, clips in tubes; ``r = 0`` masks one
  token per example, the least a mask may), packed by :func:`mmvit.pretrain.pack_masked`: the encoder on the
  visible tokens, the decoder on all of them.
- ``mae 0 (videos)``, ``mae 0.9 (videos)``: the same, on the clips of the mixed batch alone. The bar (MAE at
  0.9 at least 3x faster than at 0) is stated for video and is judged on these two rows.
- ``jepa``: the multiblock masks of the ``jepa`` preset, the predictor on all tokens and the EMA target
  encoder's forward on all tokens (plus the EMA update).

Proportions: how much masking can save depends on the share of the step that runs on visible tokens only.
VideoMAE (Tong et al. 2022) pairs a ViT-B encoder (12 blocks x 768) with a 4 x 384 decoder, so a decoder
token costs about ``4 * 384^2 / (12 * 768^2) = 1/12`` of an encoder token. The defaults keep that ratio at a
size that runs in minutes on 2 CPU cores: encoder 256 x 6 (4 heads), decoder / predictor 128 x 2 (4 heads),
``2 * 128^2 / (6 * 256^2) = 1/12``; ``--encoder`` / ``--decoder`` (``WIDTHxDEPTH``) change them.

Both packings take as many rows as first-fit-decreasing needs (``num_rows=None``), so padding is what the
packer leaves, reported per packing. The full (decoder) rows are ``seq_len`` long; the encoder's are sized to
the visible tokens, ``seq_len`` x the kept fraction rounded up to 16 (as configs/pretrain pair ``seq_len``
256 with ``full_seq_len`` 1024 at 75% masking), so that the encoder batch, like the encoder's work, shrinks
with the kept fraction. A square fp32 matmul runs in the same interleaved rounds and gives the
machine's peak for the GFLOP/s comparison.
"""

from __future__ import annotations

import math
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


# Defaults ``(width, depth)``: a decoder token costs 2 x 128^2 / (6 x 256^2) = 1/12 of an encoder token, as
# in VideoMAE (4 x 384 against ViT-B's 12 x 768), at a size that runs in minutes on 2 CPU cores.
ENCODER = (256, 6)
DECODER = (128, 2)
BUDGET_S = 150.0  # timed rounds stop after this long (at least 3 rounds)


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


def _dims(spec: tuple[int, int], head_dim: int) -> dict:
    """``(width, depth)`` -> a transformer's sizes: heads of ``head_dim`` channels, MLP 4x wide."""
    width, depth = spec
    return {"width": width, "depth": depth, "heads": max(1, width // head_dim), "mlp_dim": 4 * width}


def run(tiny: bool = False, repeats: int = 5, seed: int = 0, encoder: tuple[int, int] = ENCODER,
        decoder: tuple[int, int] = DECODER) -> Report:
    """``encoder`` / ``decoder``: ``(width, depth)`` of the encoder and of MAE's decoder / JEPA's predictor."""
    t_start = time.perf_counter()
    if tiny:
        enc = {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8}
        dec = {"width": 16, "depth": 1, "heads": 2, "mlp_dim": 32}
        n_images, n_videos, frames, side, seq_len, square = 6, 2, 4, (16, 48), 64, 256
    else:
        enc = {**_dims(encoder, 64), "patch_size": 16}
        dec = _dims(decoder, 32)
        n_images, n_videos, frames, side, seq_len, square = 24, 4, 8, (64, 256), 1024, 2048
    p = enc["patch_size"]
    ps = (2, p, p)
    images = make_images(sample_sizes(n_images, seed=seed + 2, side=side, patch=p), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    clips = [torch.randn(3, frames, h, w, generator=gen)
             for h, w in sample_sizes(n_videos, seed=seed + 3, side=side, patch=p)]
    # Two inputs: the mixed batch (images and clips) and its clips alone, where the issue states the bar.
    inputs = {"": images + clips, " (videos)": clips}

    def token_lengths(samples: list[torch.Tensor]) -> list[int]:
        grids = [(1 if s.dim() == 3 else s.shape[1] // 2, s.shape[-2] // p, s.shape[-1] // p) for s in samples]
        return [a * b * c for a, b, c in grids]

    lengths = token_lengths(inputs[""])
    video_tokens = sum(token_lengths(clips))
    w, dw = enc["width"], dec["width"]
    report = Report("pretrain", params={**enc, "decoder": dec, "images": n_images, "videos": n_videos,
                                        "frames": frames, "side": list(side), "seq_len": seq_len,
                                        "tokens": sum(lengths), "video_tokens": video_tokens,
                                        "decoder_per_token_cost": (dec["depth"] * dw * dw) / (enc["depth"] * w * w),
                                        "optimizer": "AdamW", "threads": torch.get_num_threads()})
    model_cfg = {"type": "navit", **enc, "tokenizer": {"type": "tubelet", "frames": 2}, "pool": "map"}

    variants: dict[str, Callable[[], None]] = {}
    examples: dict[str, int] = {}        # variant -> examples per step
    baseline: dict[str, str] = {}        # variant -> the mae 0 variant on the same inputs
    samples = inputs[""]
    labels = torch.randint(0, 10, (len(samples),), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    sup = build_objective({"type": "classification"}, mmvit.build_model({**model_cfg, "num_classes": 10}))
    variants["supervised"] = _trainer(sup, lambda: mmvit.pack(samples, patch_size=ps, seq_len=seq_len, labels=labels))
    examples["supervised"], baseline["supervised"] = len(samples), "mae 0"

    sup_batch = mmvit.pack(samples, patch_size=ps, seq_len=seq_len)
    shapes: dict[str, tuple[float, float, int, int]] = {"supervised": (sup_batch.padding_fraction, float("nan"),
                                                                       sum(lengths), 0)}
    flops = {"supervised": 3 * transformer_flops(lengths, w, enc["depth"], enc["mlp_dim"])
             + 4 * sum(lengths) * 3 * 2 * p * p * w}

    enc_rows: dict[str, tuple[int, int]] = {"supervised": sup_batch.shape}

    def masked(name: str, kind: str, mask: MaskConfig, cfg: dict, suffix: str = "") -> None:
        name += suffix
        data = inputs[suffix]
        all_len = token_lengths(data)
        torch.manual_seed(seed)
        objective = build_objective({"type": kind, **cfg, "mask": None}, mmvit.build_model(model_cfg))

        # Encoder rows sized to the visible tokens, as configs/pretrain size them (seq_len 256 against
        # full_seq_len 1024 at 75% masking): seq_len x the kept fraction, rounded up to 16, at least the
        # largest example's visible tokens. Fixed 1024-token rows would make the step build (and the encoder
        # scatter its output into) a batch that is 90% padding at ratio 0.9. Every step draws the same masks.
        planned = plan_masks(data, ps, mask, np.random.default_rng(seed))
        kept = sum(len(v) for v in planned) / sum(all_len)
        enc_len = min(seq_len, max(max(len(v) for v in planned), 16 * math.ceil(seq_len * kept / 16)))

        def batch() -> mmvit.PackedBatch:
            vis = plan_masks(data, ps, mask, np.random.default_rng(seed))
            return pack_masked(data, vis, patch_size=ps, seq_len=enc_len, full_seq_len=seq_len)

        variants[name] = _trainer(objective, batch, ema=kind == "jepa")
        examples[name], baseline[name] = len(data), "mae 0" + suffix
        b = batch()
        vis_len = b.lengths.tolist()
        t_vis, t_all = sum(vis_len), sum(all_len)
        shapes[name] = (b.padding_fraction, b.full.padding_fraction, t_vis, t_all)
        enc_rows[name] = b.shape
        f = 3 * transformer_flops(vis_len, w, enc["depth"], enc["mlp_dim"]) + 4 * t_vis * 3 * 2 * p * p * w
        f += 3 * transformer_flops(all_len, dw, dec["depth"], dec["mlp_dim"]) + 6 * t_vis * w * dw
        out = 3 * 2 * p * p if kind == "mae" else w
        f += 6 * (t_all - t_vis) * dw * out
        if kind == "jepa":
            f += transformer_flops(all_len, w, enc["depth"], enc["mlp_dim"]) + 2 * t_all * 3 * 2 * p * p * w
        flops[name] = f

    for suffix, ratios in (("", (0.0, 0.75, 0.9)), (" (videos)", (0.0, 0.9))):
        for r in ratios:
            mask = MaskConfig(preset="mae", image={"type": "random", "ratio": max(r, 1e-6)},
                              video={"type": "tube", "ratio": max(r, 1e-6)})
            masked(f"mae {r:g}", "mae", mask, {"decoder": dec}, suffix)
    masked("jepa", "jepa", MaskConfig(preset="jepa"), {"predictor": dec})

    a = torch.randn(square, square)
    wm = torch.randn(square, square)
    variants["matmul peak"] = lambda: [a @ wm for _ in range(3)]
    times = interleaved(variants, warmup=1, repeats=repeats, budget_s=BUDGET_S if not tiny else None)
    peak_times = times.pop("matmul peak")
    peak = 3 * 2 * square**3 / median(peak_times)
    report.params["rounds"] = len(peak_times)
    report.params["matmul_peak_gflops"] = peak / 1e9
    report.raw = {"seconds_per_round": {**times, "matmul peak": peak_times}}

    table = Table(f"Pretraining step, {n_images} images + {n_videos} clips of {frames} frames ({sum(lengths)} "
                  f"tokens) and the clips alone ({video_tokens} tokens)", [
                      Column("variant", "variant"), Column("ms", "median ms", "{:.0f}"),
                      Column("rate", "examples/s", "{:.1f}"),
                      Column("speed", "speed-up over mae 0 (same inputs)", "{:.2f}x"),
                      Column("enc", "encoder tokens", "{}"), Column("rows", "encoder rows", "{}"),
                      Column("dec", "decoder tokens", "{}"),
                      Column("pad_e", "padding (encoder)", "{:.1%}"),
                      Column("pad_f", "padding (full)", "{:.1%}"), Column("gflops", "model GFLOP/s", "{:.1f}"),
                      Column("util", "of matmul peak", "{:.0%}")])
    for name, t in times.items():
        m = median(t)
        pad_e, pad_f, t_vis, t_all = shapes[name]
        row = {"variant": name, "ms": 1e3 * m, "rate": examples[name] / m,
               "speed": ratio(times, baseline[name], name), "enc": t_vis,
               "rows": "{} x {}".format(*enc_rows[name]),
               "pad_e": pad_e, "gflops": flops[name] / m / 1e9, "util": flops[name] / m / peak}
        if pad_f == pad_f:
            row["pad_f"], row["dec"] = pad_f, t_all
        table.rows.append(row)
    table.rows.append({"variant": f"matmul peak ({square}^3 fp32)", "gflops": peak / 1e9})
    report.tables.append(table)
    report.bars.append(Bar("mae 0.9 step vs mae 0 on video (the clips alone, tubes at 90%)",
                           ratio(times, "mae 0 (videos)", "mae 0.9 (videos)"), ">=", 3.0))
    report.notes.append(f"mae 0.9 step vs mae 0 on the mixed batch (not a bar): "
                        f"{ratio(times, 'mae 0', 'mae 0.9'):.2f}x")
    report.notes.append(f"Encoder {w} x {enc['depth']}, decoder / predictor {dw} x {dec['depth']}: a decoder token "
                        f"costs {report.params['decoder_per_token_cost']:.3f} of an encoder token "
                        f"(VideoMAE's ViT-B with its 4 x 384 decoder: 0.083).")
    report.notes.append(f"Model FLOPs: {FLOP_FORMULA}. Mask planning and both packings are inside the timed step.")
    report.seconds = time.perf_counter() - t_start
    return report

"""One training step (forward, cross-entropy, backward, AdamW) on the same mixed-resolution images.

Variants, all at the same width, depth, heads and patch size:

- ``mmvit packed``: ``mmvit.pack`` at ``seq_len`` 1024, then the trunk (which computes on real tokens only).
- ``mmvit padded``: the same trunk with every image padded to the largest in the batch, one per row: packed
  with ``seq_len`` = the largest token count and ``max_per_row=1``, and the padding made part of its row's
  example so that the trunk computes on it, as a padded ViT does. (A padded ViT masks the padding keys; that
  changes the numbers, not the work.)
- vit-pytorch's ``na_vit.NaViT`` (greedy grouping to 1024 tokens, dense masks) and ``na_vit_nested_tensor.NaViT``
  (jagged nested tensors), when installed.

Packing and patchifying are inside the timed step for every variant. A square fp32 matmul runs in the same
interleaved rounds and gives the machine's peak for the GFLOP/s comparison.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

import mmvit
from mmvit.bench import peers
from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median, ratio
from mmvit.bench.images import make_images, sample_sizes, token_counts

FLOP_FORMULA = (
    "6 T depth (4 D^2 + 2 D M) [block matmuls] + 12 depth D sum(L_i^2) [attention QK^T and AV, forward and "
    "backward] + 4 T P D [patch embedding: forward and weight gradient, pixels need none] + 6 T (2 D^2 + 2 D) "
    "[MAP pooling keys/values and scores] + 6 E (2 D^2 + 2 D M + D C) [pooled query, projection, MLP, head]; "
    "T real tokens, L_i tokens of example i, E examples, D width, M MLP width, P pixels per patch, C classes"
)


def train_flops(lengths: list[int], *, width: int, depth: int, mlp_dim: int, patch_dim: int, num_classes: int
                ) -> float:
    """Model FLOPs of one training step (see ``FLOP_FORMULA``); elementwise ops are not counted."""
    d, m, t, e = width, mlp_dim, sum(lengths), len(lengths)
    s2 = sum(n * n for n in lengths)
    return (6 * t * depth * (4 * d * d + 2 * d * m) + 12 * depth * d * s2 + 4 * t * patch_dim * d
            + 6 * t * (2 * d * d + 2 * d) + 6 * e * (2 * d * d + 2 * d * m + d * num_classes))


def _trainer(model: torch.nn.Module, forward: Callable[[], tuple[torch.Tensor, torch.Tensor]]
             ) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        logits, labels = forward()
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def padded_batch(images: list[torch.Tensor], patch: int, labels: torch.Tensor) -> mmvit.PackedBatch:
    """One image per row, rows as long as the largest image; the padding belongs to its row's example."""
    longest = max(token_counts([tuple(x.shape[1:]) for x in images], patch))
    b = mmvit.pack(images, patch_size=patch, seq_len=longest, max_per_row=1, labels=labels)
    rows = b.segment_ids.shape[0]
    seg = torch.arange(1, rows + 1)[:, None].expand(rows, longest).contiguous()
    return dataclasses.replace(b, segment_ids=seg)


def run(tiny: bool = False, repeats: int = 5, seed: int = 0, peers_enabled: bool = True) -> Report:
    t_start = time.perf_counter()
    if tiny:
        cfg = {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8}
        n_images, side, seq_len, classes, square = 6, (16, 48), 64, 10, 256
    else:
        cfg = {"width": 192, "depth": 4, "heads": 3, "mlp_dim": 768, "patch_size": 16}
        n_images, side, seq_len, classes, square = 64, (64, 256), 1024, 10, 2048
    patch = cfg["patch_size"]
    sizes = sample_sizes(n_images, seed=seed + 2, side=side, patch=patch)
    images = make_images(sizes, seed=seed)
    lengths = token_counts(sizes, patch)
    labels = torch.randint(0, classes, (n_images,), generator=torch.Generator().manual_seed(seed))
    report = Report("step", params={**cfg, "images": n_images, "side": list(side), "seq_len": seq_len,
                                    "classes": classes, "tokens": sum(lengths), "optimizer": "AdamW",
                                    "threads": torch.get_num_threads()})
    torch.manual_seed(seed)
    model_cfg = {"type": "navit", **cfg, "num_classes": classes}

    variants: dict[str, Callable[[], None]] = {}
    packed_model = mmvit.build_model(model_cfg)

    def packed() -> tuple[torch.Tensor, torch.Tensor]:
        b = mmvit.pack(images, patch_size=patch, seq_len=seq_len, labels=labels)
        return packed_model(b), b.labels

    variants["mmvit packed"] = _trainer(packed_model, packed)
    padded_model = mmvit.build_model(model_cfg)

    def padded() -> tuple[torch.Tensor, torch.Tensor]:
        b = padded_batch(images, patch, labels)
        return padded_model(b), b.labels

    variants["mmvit padded to largest"] = _trainer(padded_model, padded)

    skipped = []
    if peers_enabled:
        max_side = max(max(s) for s in sizes)
        peer_kw = {"image_size": max_side, "patch_size": patch, "num_classes": classes, "dim": cfg["width"],
                   "depth": cfg["depth"], "heads": cfg["heads"], "mlp_dim": cfg["mlp_dim"],
                   "dim_head": cfg["width"] // cfg["heads"]}
        for name, module in peers.PEERS.items():
            mod, why = peers.load(module)
            if mod is None:
                skipped.append(f"{name}: skipped, {why}")
                continue
            extra = {"token_dropout_prob": 0.0} if module == "na_vit_nested_tensor" else {}
            model = mod.NaViT(**peer_kw, **extra)
            if module == "na_vit":
                fwd = (lambda m=model: (m(images, group_images=True, group_max_seq_len=seq_len), labels))
            else:
                fwd = (lambda m=model: (m(images), labels))
            variants[name] = _trainer(model, fwd)
    report.notes += skipped

    a = torch.randn(square, square)
    w = torch.randn(square, square)
    variants["matmul peak"] = lambda: [a @ w for _ in range(3)]  # [square, square] fp32, 3 times

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors warn that they are a prototype
        times = interleaved(variants, warmup=1, repeats=repeats, budget_s=120.0 if not tiny else None)
    peak_times = times.pop("matmul peak")
    report.params["rounds"] = len(peak_times)
    report.raw = {"seconds_per_round": {**times, "matmul peak": peak_times}}
    peak = 3 * 2 * square**3 / median(peak_times)

    flops = train_flops(lengths, width=cfg["width"], depth=cfg["depth"], mlp_dim=cfg["mlp_dim"],
                        patch_dim=3 * patch * patch, num_classes=classes)
    base = "mmvit packed"
    table = Table(f"Training step, {n_images} images, {sum(lengths)} tokens", [
        Column("variant", "variant"), Column("ms", "median ms", "{:.0f}"), Column("rate", "examples/s", "{:.1f}"),
        Column("ratio", "time / mmvit packed (per round)", "{:.2f}x"), Column("gflops", "model GFLOP/s", "{:.1f}")])
    for name, t in times.items():
        m = median(t)
        table.rows.append({"variant": name, "ms": 1e3 * m, "rate": n_images / m, "ratio": ratio(times, name, base),
                           "gflops": flops / m / 1e9})
    table.rows.append({"variant": f"matmul peak ({square}^3 fp32)", "gflops": peak / 1e9})
    report.tables.append(table)

    report.bars.append(Bar("mmvit packed vs padded to largest", ratio(times, "mmvit padded to largest", base),
                           ">=", 2.0))
    faster_peer = min((n for n in peers.PEERS if n in times), key=lambda n: median(times[n]), default=None)
    report.bars.append(Bar(f"mmvit packed vs the faster vit-pytorch NaViT ({faster_peer or 'not installed'})",
                           ratio(times, faster_peer, base) if faster_peer else None, ">=", 1.0))
    # Achieved / peak per round: the matmul ran in the same round as the step.
    utilization = median([(flops / t) / (6 * square**3 / p) for t, p in zip(times[base], peak_times)])
    report.bars.append(Bar("mmvit packed GFLOP/s / matmul peak", utilization, ">=", 0.5))
    report.params["model_gflop_per_step"] = flops / 1e9
    report.params["matmul_peak_gflops"] = peak / 1e9
    report.notes.append(f"Model FLOPs per step {flops / 1e9:.1f} G = {FLOP_FORMULA}. The same count divides every "
                        f"variant's time (padding's extra work is not useful work).")
    report.seconds = time.perf_counter() - t_start
    return report

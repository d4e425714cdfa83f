"""MAE reconstructions as a picture (tools/show_masked.py): input, masked input, reconstruction.

A pretraining run's DeepSpeed checkpoint holds the whole objective (encoder and decoder); the run's export
holds only the encoder, so the picture is drawn from the checkpoint. Samples come from the evaluation loader
(deterministic, native resolution), are cut back into pixels, masked with the objective's own mask
(``objective.mask``, seeded) and packed by :func:`mmvit.pretrain.pack_masked`, as training packs them.

With ``norm_pix_loss`` the decoder predicts each patch normalised by its own mean and variance (MAE); the
picture un-normalises a predicted patch with the statistics of the true patch at that place, as MAE's
visualisation does. Visible patches are shown as they are, masked ones grey in the masked input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mmvit.packing import PackedBatch, unpatchify
from mmvit.pretrain.objectives import unnorm_pix

log = logging.getLogger("mmvit.eval")


def load_objective(checkpoint: str, config: str | None = None, overrides: Sequence[str] = ()):
    """``(objective, cfg)`` of a pretraining run's newest complete DeepSpeed checkpoint (a run dir, its
    ``checkpoints`` dir or one tag dir), in eval mode, loaded strictly."""
    from mmvit import checkpoint as ckpt
    from mmvit.config import apply_override, load_config
    from mmvit.models.build import build_model
    from mmvit.objectives import build_objective

    saves = os.path.join(checkpoint, ckpt.CHECKPOINTS_DIR)
    # A run dir resolves to its export (the encoder alone) first: look in its checkpoints/ instead.
    kind, path = ckpt.resolve(saves if os.path.isdir(saves) else checkpoint)
    if kind != "deepspeed":
        raise ValueError(f"{checkpoint}: a weights file holds the encoder only; the reconstruction needs the "
                         f"decoder: give the pretraining run dir (its checkpoints/) or a checkpoint tag dir")
    save_dir, tag = ckpt.split_tag(path)
    state, states, _ = ckpt.consolidate(save_dir, tag)
    if config is not None:
        cfg = load_config(config, overrides).to_dict()
    else:
        cfg, _ = ckpt.find_config(path, states)
        if cfg is None:
            raise FileNotFoundError(f"{path}: no config in the checkpoint or beside it; pass --config")
        cfg = dict(cfg)
        for o in overrides:
            apply_override(cfg, o)
    objective = build_objective(cfg.get("objective"), build_model(cfg))
    if not hasattr(objective, "decoder") or not hasattr(objective, "mask"):
        raise ValueError(f"{checkpoint}: objective {type(objective).__name__} reconstructs no pixels (MAE does)")
    missing, unexpected = objective.load_state_dict(state, strict=False)
    # The encoder's pool is frozen in pretraining (MAE never uses it) and a ZeRO checkpoint's fp32 master
    # weights hold trained parameters only; reconstruction does not use the pool.
    pool = [k for k in missing if k.startswith("model.pool.")]
    if pool:
        log.info("%s: the encoder's pool is not in the checkpoint (frozen in pretraining, unused here)", path)
    missing = [k for k in missing if k not in pool]
    if missing or unexpected:
        raise KeyError(f"{path}: weights do not match the objective: missing {missing[:5]}, unexpected "
                       f"{unexpected[:5]}")
    return objective.eval(), cfg


def examples_of(batch: PackedBatch, channels: int = 3) -> list[torch.Tensor]:
    """The ``C x T x H x W`` pixels (normalised, as packed) of every example of an undropped batch."""
    seg = batch.segment_ids.reshape(-1)
    patches = batch.patches.reshape(-1, batch.patches.shape[-1])
    coords = batch.coords.reshape(-1, 3).long()
    out = []
    for e in range(batch.num_examples):
        slots = torch.nonzero(seg == e + 1, as_tuple=True)[0]
        grid = [int(g) for g in batch.grid[e]]
        c = coords[slots]
        order = torch.argsort((c[:, 0] * grid[1] + c[:, 1]) * grid[2] + c[:, 2])
        if len(slots) != grid[0] * grid[1] * grid[2]:
            raise ValueError("examples_of needs every token of an example (no token dropping)")
        out.append(unpatchify(patches[slots][order], grid, tuple(batch.patch_size), channels))
    return out


@dataclasses.dataclass
class Reconstruction:
    """Per example ``C x T x H x W`` normalised pixels: the input, the masked input, the reconstruction."""

    kind: str
    input: torch.Tensor
    masked: torch.Tensor
    output: torch.Tensor


@torch.no_grad()
def reconstruct(objective, samples: Sequence[torch.Tensor], kinds: Sequence[str], seed: int = 0
                ) -> list[Reconstruction]:
    """Mask ``samples`` (``C x T x H x W``; images as ``pt``-frame stills) with the objective's mask, run MAE,
    and paste its predictions into the masked patches."""
    from mmvit.pretrain.masking import mask_rng
    from mmvit.pretrain.pack import pack_masked, plan_masks, sample_grid

    ps = tuple(objective.patch_size)
    # Images go in as 3-D samples so that they get the image mask; pack_masked repeats them over pt frames.
    inputs = [s[:, 0] if k == "image" else s for s, k in zip(samples, kinds)]
    visible = plan_masks(inputs, ps, objective.mask, [mask_rng(seed, i) for i in range(len(inputs))])
    sizes = [int(np.prod(sample_grid(s, ps))) for s in inputs]
    batch = pack_masked(inputs, visible, patch_size=ps, seq_len=max(len(v) for v in visible),
                        full_seq_len=max(sizes))
    pred = objective.predict(batch)
    full = batch.full
    flat = full.patches.reshape(-1, full.patches.shape[-1]).clone()
    values = pred.values.float()
    if objective.cfg.norm_pix_loss:   # back to pixels with the true patch's own mean and variance
        values = unnorm_pix(values, flat[pred.slots], objective.cfg.norm_pix_eps, objective.norm_channels)
    recon = flat.clone()
    recon[pred.slots] = values
    masked = flat.clone()
    masked[pred.slots] = 0.0     # 0 in normalised space: the data mean, a neutral grey
    shape = full.patches.shape
    channels = objective.model.tokenizer.in_chans
    parts = {name: examples_of(dataclasses.replace(full, patches=t.view(shape)), channels)
             for name, t in (("input", flat), ("masked", masked), ("output", recon))}
    order = full.parent_index.tolist()    # full batch example -> parent example
    parent_to_input = batch.example_ids.tolist()
    out: list[Reconstruction | None] = [None] * len(samples)
    for j, parent in enumerate(order):
        i = parent_to_input[parent]
        out[i] = Reconstruction(kinds[i], parts["input"][j], parts["masked"][j], parts["output"][j])
    return out  # type: ignore[return-value]


def to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``C x H x W`` normalised pixels -> ``H x W x C`` uint8."""
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return ((x * s + m).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def grid_image(rows: Sequence[tuple[str, Sequence[np.ndarray]]], cell: int = 96, pad: int = 4,
               label_width: int = 70) -> np.ndarray:
    """A white canvas with one row per ``(label, [H x W x 3 images])``; each image is scaled (nearest
    neighbour, aspect kept) to fit a ``cell`` square. Labels are drawn when Pillow has a default font."""
    from PIL import Image, ImageDraw

    ncols = max(len(imgs) for _, imgs in rows)
    width = label_width + ncols * (cell + pad) + pad
    height = len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, img in enumerate(imgs):
            h, w = img.shape[:2]
            scale = cell / max(h, w)
            tile = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
            canvas.paste(tile, (label_width + pad + c * (cell + pad), y))
    return np.asarray(canvas)


def picture_rows(recons: Sequence[Reconstruction], data_cfg: Mapping, frames: int = 2
                 ) -> list[tuple[str, list[np.ndarray]]]:
    """One row per image, ``frames`` rows per video (first, then evenly spaced): input | masked | output."""
    mean = data_cfg.get("mean", [0.485, 0.456, 0.406])
    std = data_cfg.get("std", [0.229, 0.224, 0.225])
    rows = []
    for n, r in enumerate(recons):
        t = r.input.shape[1]
        picks = [0] if r.kind == "image" else sorted({int(round(i * (t - 1) / max(1, frames - 1)))
                                                      for i in range(frames)})
        for f in picks:
            label = f"image {n}" if r.kind == "image" else f"video {n} t{f}"
            rows.append((label, [to_uint8(x[:, f], mean, std) for x in (r.input, r.masked, r.output)]))
    return rows


def first_samples(cfg: Mapping, split: str, counts: Mapping[str, int], seed: int = 0
                  ) -> tuple[list[torch.Tensor], list[str]]:
    """The first ``counts[kind]`` examples of each kind of ``split`` (evaluation loader, one full-frame view),
    as ``C x T x H x W`` normalised pixels."""
    from mmvit.data import build_loader
    from mmvit.eval.features import Level, settings_for
    from mmvit.eval.plan import pass_data_config, plan_passes
    from mmvit.eval.runner import example_key

    data_cfg = dict(cfg["data"])
    kinds = [k for k in ("image", "video") if counts.get(k)]
    settings = settings_for(split, Level(), kinds, seed)
    from mmvit.eval.encoders import run_tables

    samples, out_kinds = [], []
    tables = run_tables(dict(cfg))
    for p in plan_passes(settings, data_cfg):
        got = 0
        loader, control = build_loader(pass_data_config(data_cfg, p, settings), split=split, rank=0, world_size=1,
                                       seed=seed, stage=p.stage(), train=False, tables=tables)
        try:
            for batch in loader:
                for meta, x in zip(batch.meta, examples_of(batch)):
                    if example_key(meta)[2] == p.kind and got < counts[p.kind]:
                        samples.append(x)
                        out_kinds.append(p.kind)
                        got += 1
                if got >= counts[p.kind]:
                    break
        finally:
            for obj in (control, loader):
                if callable(getattr(obj, "close", None)):
                    obj.close()
    return samples, out_kinds


def main(argv: Sequence[str] | None = None) -> str:
    import argparse

    from PIL import Image

    from mmvit.config import load_config

    parser = argparse.ArgumentParser(description="Input, masked input and MAE reconstruction of a few images and "
                                                 "video frames, as one PNG.", epilog="See docs/pretraining.md.")
    parser.add_argument("checkpoint", help="an MAE pretraining run dir (its newest checkpoint) or a checkpoint tag dir")
    parser.add_argument("--config", default=None, help="config instead of the checkpoint's")
    parser.add_argument("--data-config", default=None,
                        help="read the split from this config's data section (e.g. one with a test split)")
    parser.add_argument("--split", default="train", help="data split (default train)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=2, help="frames shown per video")
    parser.add_argument("--cell", type=int, default=96, help="side of one picture in px")
    parser.add_argument("--seed", type=int, default=0, help="mask seed")
    parser.add_argument("--out", default=None, help="PNG path (default <run dir>/reconstruction.png)")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [o for group in args.overrides for o in group]
    objective, cfg = load_objective(args.checkpoint, args.config, overrides)
    data_source = dict(load_config(args.data_config).to_dict()) if args.data_config else cfg
    data_source = {**data_source, "data": {**dict(data_source["data"]),
                                           # what the encoder was trained with, whatever config names the split
                                           **{k: cfg["data"][k] for k in ("mean", "std", "patch_sizes", "tubelet")
                                              if k in cfg["data"]}}}
    samples, kinds = first_samples(data_source, args.split, {"image": args.images, "video": args.videos}, args.seed)
    if not samples:
        raise SystemExit(f"split {args.split!r} gave no samples")
    recons = reconstruct(objective, samples, kinds, seed=args.seed)
    picture = grid_image(picture_rows(recons, cfg["data"], args.frames), cell=args.cell)
    from mmvit import checkpoint as ckpt

    out = args.out or os.path.join(ckpt.run_dir_of(args.checkpoint), "reconstruction.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(picture).save(out, optimize=True)
    print(f"wrote {out} ({len(samples)} samples: columns input | masked | reconstruction)")
    return out

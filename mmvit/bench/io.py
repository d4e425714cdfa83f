"""Input pipeline: packed batches/s of ``mmvit.data.build_loader`` against the step time (``loader``);
video decoding (``decode``) lives in :mod:`mmvit.bench.decode` and is re-exported here as ``run_decode``.

- ``loader``: the demo dataset (``mmvit.demo``, built in a temporary folder unless ``--data`` names
  one) read with 0, 1 and 2 workers; batches/s against the time of one training step of the demo model on
  those batches. The loader keeps up when ``batches/s x step seconds >= 1``. Loader and step are timed apart
  (on a 2-core machine they would share the cores in training).
- The same at Kinetics' shape: a video-heavy mix (three clips to one digit image) of generated 340x256,
  10 s, 30 fps H.264 videos with a key frame every 2 s (Kinetics-400's typical files; ``mmvit.bench.decode``
  writes them), 16-frame clips (Kinetics' 16x4 sampling), with the share of the loader's time spent in
  decoding (measured in process, 0 workers).
- With ``data.cache_mb``: the demo's batches/s in process once one pass has filled the cache, against the
  uncached loader (what later epochs of data that fits in memory cost).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median
from mmvit.bench.decode import run as run_decode  # noqa: F401  (tools/benchmark.py decode)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo_dir(data_dir: str | None, tiny: bool, tmp: str) -> str:
    if data_dir:
        return data_dir
    from mmvit.demo import digits as demo_data

    counts = {"images": (60, 0, 0), "videos": (20, 0, 0)} if tiny else {"images": (400, 0, 0), "videos": (120, 0, 0)}
    demo_data.build(tmp, seed=0, counts=counts, shards=False)
    return tmp


def _configs(data_dir: str) -> tuple[dict, dict, str, object]:
    """(model, data) sections of the demo config with its training sources pointed at ``data_dir``, where
    they came from, and the class tables (the model's heads sized from them)."""
    import mmvit
    from mmvit.data.classes import resolve_class_tables, with_tables

    sources = [{"type": "image_list", "list": os.path.join(data_dir, "train_images.txt"), "task": "digits"},
               {"type": "video_list", "list": os.path.join(data_dir, "train_videos.txt"), "task": "motion"}]
    source = os.path.join("configs", "demo", "demo.yaml")
    cfg = mmvit.load_config(os.path.join(ROOT, source)).to_dict()
    data = {k: v for k, v in cfg["data"].items() if k != "splits"}
    data.update(sources=sources, persistent_workers=False)
    cfg = {**cfg, "data": data}
    tables = resolve_class_tables(cfg)
    return with_tables(cfg, tables)["model"], data, source, tables


KINETICS_CLIPS = 8        # generated 340x256 videos (tiny: 2 short ones)
KINETICS_DATA = {"frames": 16, "frame_interval": 4, "sampling": "clip", "seq_len": 1024, "batch_rows": 2,
                 "resolution": {"type": "uniform", "min": 64, "max": 96}}


def _rates(data_cfg: dict, tables, workers: tuple[int, ...], n_batches: int, seed: int, table: Table,
           label: str = "") -> tuple[dict[int, float], list]:
    """Batches/s of the loader at each worker count (after the first batch); rows go into ``table``."""
    from mmvit.data import build_loader

    rates, batches = {}, []
    for n in workers:
        # An epoch of at least the timed batches (the estimated one of a small dataset can be shorter).
        loader, _ = build_loader({**data_cfg, "num_workers": n, "batches_per_epoch": n_batches + 1}, split="train",
                                 rank=0, world_size=1, tables=tables, seed=seed, train=True)
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        t1 = time.perf_counter()
        got = [next(it) for _ in range(n_batches)]
        rates[n] = n_batches / (time.perf_counter() - t1)
        batches += got
        table.rows.append({"data": label, "workers": n, "rate": rates[n], "first_s": t1 - t0,
                           "padding": sum(b.padding_fraction for b in got) / len(got),
                           "per_row": sum(b.num_examples / b.shape[0] for b in got) / len(got)})
        del it, loader
    return rates, batches


def _cached_rate(data_cfg: dict, tables, n_batches: int, seed: int) -> dict:
    """Batches/s in process (0 workers) with ``data.cache_mb`` once one pass has filled the cache: what the
    later epochs of a dataset that fits in memory cost."""
    from mmvit.data import build_loader

    loader, _ = build_loader({**data_cfg, "num_workers": 0, "cache_mb": 4096, "batches_per_epoch": n_batches + 1},
                             split="train", rank=0, world_size=1, tables=tables, seed=seed, train=True)
    cache = loader.dataset.decoded_cache()   # in this process (0 workers): the one the passes fill
    while True:   # passes until one decodes almost nothing new
        misses = cache.misses
        for _ in loader:
            pass
        if cache.misses - misses <= 0.01 * len(cache.items):
            break
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    got = [next(it) for _ in range(n_batches)]
    rate = n_batches / (time.perf_counter() - t0)
    return {"data": "demo, cache_mb warm", "workers": 0, "rate": rate, "first_s": float("nan"),
            "padding": sum(b.padding_fraction for b in got) / len(got),
            "per_row": sum(b.num_examples / b.shape[0] for b in got) / len(got)}


def _step_seconds(model_cfg: dict, batches: list, repeats: int) -> float:
    """Median time of one training step (forward, cross-entropy per task head, backward, AdamW)."""
    import mmvit
    from mmvit.objectives import build_objective

    objective = build_objective(None, mmvit.build_model(model_cfg))
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    work = batches[: max(2, repeats + 1)]

    def step() -> None:
        b = work.pop(0)
        work.append(b)
        loss = objective(b).losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median(interleaved({"step": step}, warmup=1, repeats=repeats)["step"])


def _kinetics_dir(root: str, demo_root: str, tiny: bool) -> str:
    """Kinetics-shaped clips (labels over the demo's motion classes: only their shape matters here) and a
    list of them, beside the demo's digit images."""
    from mmvit.bench.decode import VIDEOS, write_clip
    from mmvit.demo.digits import DIRECTIONS

    _, h, w, seconds, fps, gop = VIDEOS[0]
    n, frames = (2, 72) if tiny else (KINETICS_CLIPS, int(seconds * fps))
    os.makedirs(os.path.join(root, "kinetics"), exist_ok=True)
    lines = []
    for i in range(n):
        path = os.path.join(root, "kinetics", f"{i:03d}.mp4")
        write_clip(path, h, w, frames, fps, gop)
        lines.append(f"{path} {DIRECTIONS[i % len(DIRECTIONS)]}")
    with open(os.path.join(root, "kinetics.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(root, "kinetics.txt")


def _decode_share(data_cfg: dict, tables, n_batches: int, seed: int) -> tuple[float, float]:
    """Fraction of an in-process (0 workers) loader's time spent reading and decoding media, for videos and
    images: the per-example decode of the stream's worker, timed around each call."""
    from mmvit.data import stream

    spent = {"video": 0.0, "image": 0.0}
    original = stream._Worker.decode

    def timed(self, w, *args, **kwargs):
        t = time.perf_counter()
        try:
            return original(self, w, *args, **kwargs)
        finally:
            spent[w.draw.item.kind] += time.perf_counter() - t

    stream._Worker.decode = timed
    try:
        from mmvit.data import build_loader

        loader, _ = build_loader({**data_cfg, "num_workers": 0, "batches_per_epoch": n_batches + 1}, split="train",
                                 rank=0, world_size=1, tables=tables, seed=seed, train=True)
        it = iter(loader)
        next(it)
        spent.update(video=0.0, image=0.0)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        total = time.perf_counter() - t0
    finally:
        stream._Worker.decode = original
    return spent["video"] / total, spent["image"] / total


def run_loader(tiny: bool = False, repeats: int = 5, seed: int = 0, data_dir: str | None = None) -> Report:
    t_start = time.perf_counter()
    report = Report("loader")
    n_batches = 3 if tiny else 30
    columns = [Column("data", "data"), Column("workers", "workers"), Column("rate", "batches/s", "{:.2f}"),
               Column("first_s", "first batch s", "{:.2f}"), Column("keeps_up", "batches/s x step s", "{:.2f}"),
               Column("padding", "padding", "{:.2%}"), Column("per_row", "examples/row", "{:.2f}")]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = _demo_dir(data_dir, tiny, os.path.join(tmp, "demo"))
        except ImportError as e:  # the demo data needs scikit-learn (its digits) and PyAV (its videos)
            report.skipped = f"cannot build the demo dataset: {e}"
            report.bars.append(Bar("loader batches/s x step time, 2 workers", None, ">=", 1.0))
            return report
        model_cfg, data_cfg, source, tables = _configs(root)
        report.params.update(config=source, data=root if data_dir else "temporary demo dataset",
                             batches=n_batches, seq_len=data_cfg.get("seq_len"), batch_rows=data_cfg.get("batch_rows"))

        # 1. The demo's own data and shapes.
        table = Table("Packed batches from the demo dataset", columns)
        rates, batches = _rates(data_cfg, tables, (0, 1, 2), n_batches, seed, table, "demo")
        step_s = _step_seconds(model_cfg, batches, repeats)
        for row in table.rows:
            row["keeps_up"] = row["rate"] * step_s
        table.rows.append({"data": "demo", "workers": "train step of the demo model", "rate": 1.0 / step_s})
        report.tables.append(table)
        report.bars.append(Bar("loader batches/s x step time, 2 workers", rates[2] * step_s, ">=", 1.0))
        report.notes.append(f"demo: model and data of {source}; step {1e3 * step_s:.0f} ms "
                            f"({data_cfg.get('batch_rows')} x {data_cfg.get('seq_len')} tokens).")
        cached = _cached_rate(data_cfg, tables, n_batches, seed)
        table.rows.append({**cached, "keeps_up": cached["rate"] * step_s})
        report.params.update(cache_speedup=round(cached["rate"] / rates[0], 3))
        report.notes.append(f"demo, data.cache_mb: in process after one pass that filled the cache, "
                            f"{cached['rate'] / rates[0]:.2f}x the batches/s of the uncached loader (0 workers).")

        # 2. Video-heavy at Kinetics' shape: 3 clips to 1 image, 16 frames, the demo model.
        kinetics = _kinetics_dir(tmp, root, tiny)
        images = next(s for s in data_cfg["sources"] if s["type"] == "image_list")
        k_cfg = {**data_cfg, **KINETICS_DATA, "video_backend": "auto",
                 "sources": [{"type": "video_list", "list": kinetics, "task": "motion", "weight": 3},
                             {**images, "weight": 1}]}
        table = Table("Video-heavy mix at Kinetics' shape (340x256 H.264, 16 frames x 4)", columns)
        rates, batches = _rates(k_cfg, tables, (0, 2), n_batches, seed, table, "kinetics-shape")
        step_s = _step_seconds(model_cfg, batches, repeats)
        for row in table.rows:
            row["keeps_up"] = row["rate"] * step_s
        table.rows.append({"data": "kinetics-shape", "workers": "train step of the demo model", "rate": 1.0 / step_s})
        video_share, image_share = _decode_share(k_cfg, tables, max(2, n_batches // 2), seed)
        report.tables.append(table)
        report.bars.append(Bar("Kinetics-shape loader batches/s x step time, 2 workers", rates[2] * step_s, ">=", 1.0))
        report.params.update(kinetics_decode_share=round(video_share, 3), kinetics_image_share=round(image_share, 3))
        report.notes.append(
            f"kinetics-shape: {k_cfg['frames']} frames every {k_cfg['frame_interval']}, side U({k_cfg['resolution']['min']}, "
            f"{k_cfg['resolution']['max']}), {k_cfg['batch_rows']} x {k_cfg['seq_len']} tokens, backend auto; "
            f"step {1e3 * step_s:.0f} ms; in process, video decoding is {video_share:.0%} of the loader's time "
            f"and image decoding {image_share:.0%} (the rest: sampling, crops, resizing, patchify, packing).")
    report.seconds = time.perf_counter() - t_start
    return report

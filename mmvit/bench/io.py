"""Input pipeline: packed batches/s of ``mmvit.data.build_loader`` against the step time, and video decoding.

- ``loader``: the demo dataset (``mmvit.demo_data``, built in a temporary folder unless ``--data`` names
  one) read with 0, 1 and 2 workers; batches/s against the time of one training step of the demo model on
  those batches. The loader keeps up when ``batches/s x step seconds >= 1``. Loader and step are timed apart
  (on a 2-core machine they would share the cores in training).
- ``decode``: ``mmvit.data.read_video`` with decord and with PyAV, 8 frames sampled TSN-style over a video
  (sparse) and a dense 16-frame clip, on a generated H.264 mp4 (30 fps, 10 s, 340x256, a keyframe every 2 s,
  the shape of a Kinetics clip). Each call probes the file and decodes, as ``read_video`` does.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median

# The demo model and data when configs/train/demo_cpu.yaml is missing: digits are 32-96 px, so patch 8.
DEMO_MODEL = {"type": "navit", "variant": "Ti/16", "depth": 4, "patch_size": 8, "num_classes": 18}
DEMO_DATA = {"seq_len": 256, "batch_rows": 8, "patch_sizes": [8], "frames": 8, "num_classes": 18,
             "resolution": {"type": "uniform", "min": 32, "max": 96}, "persistent_workers": False}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo_dir(data_dir: str | None, tiny: bool, tmp: str) -> str:
    if data_dir:
        return data_dir
    from mmvit.demo import digits as demo_data

    counts = {"images": (60, 0, 0), "videos": (20, 0, 0)} if tiny else {"images": (400, 0, 0), "videos": (120, 0, 0)}
    demo_data.build(tmp, seed=0, counts=counts, shards=False)
    return tmp


def _configs(data_dir: str) -> tuple[dict, dict, str]:
    """(model, data) sections of the demo config, its training sources pointed at ``data_dir``."""
    sources = [{"type": "image_list", "list": os.path.join(data_dir, "train_images.txt")},
               {"type": "video_list", "list": os.path.join(data_dir, "train_videos.txt")}]
    name = os.path.join("configs", "train", "demo_cpu.yaml")
    if not os.path.exists(os.path.join(ROOT, name)):
        return DEMO_MODEL, {**DEMO_DATA, "sources": sources}, f"built-in ({name} not found)"
    try:
        import mmvit

        cfg = mmvit.load_config(os.path.join(ROOT, name)).to_dict()
        data = {k: v for k, v in cfg["data"].items() if k != "splits"}
        data.update(sources=sources, persistent_workers=False)
        return cfg["model"], data, name
    except Exception as e:  # someone else's config, possibly mid-change: fall back rather than fail the run
        return DEMO_MODEL, {**DEMO_DATA, "sources": sources}, f"built-in ({name} unusable: {e})"


def run_loader(tiny: bool = False, repeats: int = 5, seed: int = 0, data_dir: str | None = None) -> Report:
    t_start = time.perf_counter()
    report = Report("loader")
    import mmvit
    from mmvit.data import build_loader

    n_batches = 3 if tiny else 30
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = _demo_dir(data_dir, tiny, tmp)
        except ImportError as e:  # the demo data needs scikit-learn (its digits) and PyAV (its videos)
            report.skipped = f"cannot build the demo dataset: {e}"
            report.bars.append(Bar("loader batches/s x step time, 2 workers", None, ">=", 1.0))
            return report
        model_cfg, data_cfg, source = _configs(root)
        report.params.update(config=source, data=root if data_dir else "temporary demo dataset",
                             batches=n_batches, seq_len=data_cfg.get("seq_len"), batch_rows=data_cfg.get("batch_rows"))
        table = Table("Packed batches from the demo dataset", [
            Column("workers", "workers"), Column("rate", "batches/s", "{:.2f}"), Column("first_s", "first batch s",
                                                                                       "{:.2f}"),
            Column("keeps_up", "batches/s x step s", "{:.2f}"), Column("padding", "padding", "{:.2%}"),
            Column("per_row", "examples/row", "{:.2f}")])
        rates, batches = {}, []
        for workers in (0, 1, 2):
            loader, _ = build_loader({**data_cfg, "num_workers": workers}, split="train", rank=0, world_size=1,
                                     seed=seed, train=True)
            it = iter(loader)
            t0 = time.perf_counter()
            first = next(it)
            t1 = time.perf_counter()
            for _ in range(n_batches):
                batches.append(next(it))
            rates[workers] = n_batches / (time.perf_counter() - t1)
            got = batches[-n_batches:]
            table.rows.append({"workers": workers, "rate": rates[workers], "first_s": t1 - t0,
                               "padding": sum(b.padding_fraction for b in got) / len(got),
                               "per_row": sum(b.num_examples / b.shape[0] for b in got) / len(got)})
            del it, loader, first
        model = mmvit.build_model(model_cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        work = batches[: max(2, repeats + 1)]

        def step() -> None:
            b = work.pop(0)
            work.append(b)
            loss = F.cross_entropy(model(b), b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step_s = median(interleaved({"step": step}, warmup=1, repeats=repeats)["step"])
        for row in table.rows:
            row["keeps_up"] = row["rate"] * step_s
        table.rows.append({"workers": "train step of the demo model", "rate": 1.0 / step_s})
        report.tables.append(table)
        report.bars.append(Bar("loader batches/s x step time, 2 workers", rates[2] * step_s, ">=", 1.0))
        report.notes.append(f"model and data: {source}; step {1e3 * step_s:.0f} ms "
                            f"({data_cfg.get('batch_rows')} x {data_cfg.get('seq_len')} tokens).")
    report.seconds = time.perf_counter() - t_start
    return report


def write_test_video(path: str, *, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (256, 340),
                     gop: int = 60) -> int:
    """A moving-pattern H.264 mp4 (yuv420p) at ``path``; returns its frame count."""
    import av

    h, w = size
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(n):
            phase = 2 * np.pi * t / fps
            img = np.stack([np.sin(xx / 17 + phase), np.cos(yy / 23 - phase), np.sin((xx + yy) / 31 + 2 * phase)], -1)
            frame = av.VideoFrame.from_ndarray(((img + 1) * 127.5).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return n


def run_decode(tiny: bool = False, repeats: int = 5, seed: int = 0, data_dir: str | None = None) -> Report:
    t_start = time.perf_counter()
    report = Report("decode")
    backends = [b for b in ("decord", "av") if importlib.util.find_spec(b) is not None]
    if "av" not in backends:
        report.skipped = "PyAV is not installed (pip install av)"
        return report
    from mmvit.data import read_video, sample_frames

    names = {"decord": "decord", "av": "pyav"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        n = write_test_video(path, seconds=2.0 if tiny else 10.0, size=(64, 96) if tiny else (256, 340))
        report.params.update(frames=n, fps=30, size="96x64" if tiny else "340x256", keyframe_every=60)
        jobs = {"8-frame sparse (TSN uniform)": sample_frames(n, 8, sampling="uniform")[0],
                "16-frame dense clip": sample_frames(n, 16, sampling="clip")[0]}
        table = Table(f"read_video on a {n}-frame H.264 mp4", [
            Column("job", "frames read"), Column("backend", "backend"), Column("ms", "median ms", "{:.1f}"),
            Column("rate", "samples/s", "{:.1f}"), Column("ratio", "vs PyAV", "{:.2f}x")])
        for job, indices in jobs.items():
            variants = {names[b]: (lambda b=b, idx=indices: read_video(path, idx, names[b])) for b in backends}
            times = interleaved(variants, warmup=1, repeats=repeats)
            for b, t in times.items():
                table.rows.append({"job": job, "backend": b, "ms": 1e3 * median(t), "rate": 1 / median(t),
                                   "ratio": median(times["pyav"]) / median(t)})
        report.tables.append(table)
        if "decord" not in backends:
            report.notes.append("decord is not installed: PyAV only.")
    report.notes.append("Issue 5 sets no bar for decoding; the table says which backend to prefer here.")
    report.seconds = time.perf_counter() - t_start
    return report

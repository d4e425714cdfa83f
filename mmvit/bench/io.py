"""Input pipeline: packed batches/s of ``mmvit.data.build_loader`` against the step time (``loader``);
video decoding (``decode``) lives in :mod:`mmvit.bench.decode` and is re-exported here as ``run_decode``.

- ``loader``: the demo dataset (``mmvit.demo_data``, built in a temporary folder unless ``--data`` names
  one) read with 0, 1 and 2 workers; batches/s against the time of one training step of the demo model on
  those batches. The loader keeps up when ``batches/s x step seconds >= 1``. Loader and step are timed apart
  (on a 2-core machine they would share the cores in training).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn.functional as F

from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median
from mmvit.bench.decode import run as run_decode  # noqa: F401  (tools/benchmark.py decode)

# The demo model and data when configs/train/demo_cpu.yaml is missing: digits are 32-96 px, so patch 8.
DEMO_MODEL = {"type": "navit", "variant": "Ti/16", "depth": 4, "patch_size": 8}
DEMO_DATA = {"seq_len": 256, "batch_rows": 8, "patch_sizes": [8], "frames": 8,
             "resolution": {"type": "uniform", "min": 32, "max": 96}, "persistent_workers": False}
DEMO_TASKS = {"digits": {"num_classes": 10}, "motion": {"classes": ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]}}
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
    name = os.path.join("configs", "train", "demo_cpu.yaml")
    cfg = {"tasks": DEMO_TASKS, "model": DEMO_MODEL, "data": DEMO_DATA}
    source = f"built-in ({name} not found)"
    if os.path.exists(os.path.join(ROOT, name)):
        cfg, source = mmvit.load_config(os.path.join(ROOT, name)).to_dict(), name
    data = {k: v for k, v in cfg["data"].items() if k != "splits"}
    data.update(sources=sources, persistent_workers=False)
    cfg = {**cfg, "data": data}
    tables = resolve_class_tables(cfg)
    return with_tables(cfg, tables)["model"], data, source, tables


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
        model_cfg, data_cfg, source, tables = _configs(root)
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
                                     tables=tables,
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

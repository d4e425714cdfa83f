"""``build_loader``: the ``data:`` config section to a DataLoader of packed batches and its control handle.

Batches per rank: training streams are endless (every source is resampled by cycles) and an epoch is a
fixed ``batches_per_epoch`` batches on every rank (configured, or estimated from the data size and the
expected tokens per example), so no rank runs dry while the others wait in a collective. Evaluation is one
exact pass: each (sample, view) goes to exactly one rank and worker, so ranks may end a few batches apart;
the evaluation loop gathers results at the end (or pads with empty steps itself).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import signal
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmvit.data.classes import ClassTables, resolve_class_tables
from mmvit.data.config import DataConfig, resolve_data_config
from mmvit.data.control import DataControl, SharedState
from mmvit.data.sources import SourceContext, build_sources
from mmvit.data.sources.base import Source
from mmvit.data.stage import Stage, make_stage, mean_tokens
from mmvit.data.stream import PackedStream, PassEnd
from mmvit.token_drop import make_rate_fn


def _identity(batch: Any) -> Any:
    return batch


# The signals that ask a training run to checkpoint and stop (mmvit/train/preempt.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def worker_init(worker_id: int) -> None:
    """Loader workers ignore the stop signals: a SIGTERM to the whole process group (SLURM, ``timeout``, the
    launchers) would otherwise kill them first and the rank with them; their rank shuts them down when it
    stops. The decode-isolation children they start inherit the setting."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class PackedLoader(DataLoader):
    """A DataLoader whose iteration also keeps the :class:`DataControl` informed (position, stats).

    It has its own generator, reseeded at every ``iter()`` from the seed, the rank and the data position:
    the DataLoader draws its workers' base seed from it, which would otherwise advance the process's global
    torch generator (drop-path) by one draw per epoch and differ between a resumed and an uninterrupted run.
    """

    def __init__(self, dataset: PackedStream, control: DataControl, **kwargs: Any):
        super().__init__(dataset, batch_size=None, collate_fn=_identity, generator=torch.Generator(), **kwargs)
        self.control = control
        self._live: Any = None  # the running DataLoader iterator (its workers)

    def __iter__(self):
        self.control.begin_iter()
        c = self.control
        self.generator.manual_seed(((c.seed * 1_000_003 + c.rank) * 1_000_003 + c.g) % 2 ** 63)
        it = super().__iter__()
        self._live = it
        try:
            for batch in it:
                if isinstance(batch, PassEnd):
                    self.control.record_counts(batch)
                    continue
                self.control.record(batch)
                yield batch
        except Exception as e:
            # The traceback's frames inside the DataLoader iterator keep it alive in a reference cycle; shut
            # its workers down now (dropping the last reference) instead of in a slow garbage-collector pass.
            e.__traceback__ = None
            del it
            self._iterator = None
            self._live = None
            raise

    def shutdown(self) -> None:
        """Stop the workers now (the rank is about to exit) instead of when the garbage collector runs."""
        for it in (self._live, self._iterator):
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        self._live = self._iterator = None


def estimate_batches_per_epoch(cfg: DataConfig, sources: list[Source], world_size: int) -> int:
    """``ceil(samples / (world_size * expected examples per batch))``: one pass over the data per epoch, at
    the full stage's expected tokens per example (:func:`mmvit.data.stage.mean_tokens`), ~5% padding."""
    counts = [s.num_items() for s in sources]
    if any(c is None for c in counts):
        raise ValueError("data.batches_per_epoch is needed when a source does not know its size (give the "
                         "webdataset source num_samples, or its index file from tools/make_shards.py)")
    total = sum(counts)
    if total == 0:
        raise ValueError("the training sources hold no samples")
    stage, rate_fn = cfg.full_stage(), make_rate_fn(cfg.drop_rate)
    per_kind = {video: mean_tokens(cfg, stage, video=video, rate_fn=rate_fn) for video in (False, True)}
    tokens = sum(c * (s.video_fraction() * per_kind[True] + (1 - s.video_fraction()) * per_kind[False])
                 for s, c in zip(sources, counts)) / total
    per_batch = cfg.batch_rows * cfg.seq_len * 0.95 / max(tokens, 1.0)
    if cfg.max_per_row is not None:
        per_batch = min(per_batch, cfg.batch_rows * cfg.max_per_row)
    return max(1, math.ceil(total / (world_size * per_batch)))


def default_tables(data_cfg: dict | DataConfig, split: str) -> ClassTables:
    """Class tables for a loader built without the run's: those of the config's training split (or of
    ``split`` itself when the config has no training split), one task."""
    if isinstance(data_cfg, DataConfig):
        data_cfg = dataclasses.asdict(data_cfg)
    splits = (data_cfg or {}).get("splits") or {}
    source_split = "train" if ("train" in splits or not splits) else split
    return resolve_class_tables({"data": data_cfg}, source_split)


def build_loader(data_cfg: dict | DataConfig, *, split: str, rank: int, world_size: int, seed: int,
                 stage: Stage | dict | None = None, train: bool, tables: ClassTables | None = None
                 ) -> tuple[PackedLoader, DataControl]:
    """A DataLoader of :class:`mmvit.PackedBatch` es of exactly ``[batch_rows, seq_len]``, and its control.

    Args:
        data_cfg: the ``data:`` section of a config (or a :class:`DataConfig`).
        split: which split's sources to read (``data.splits.<split>`` overrides the top level).
        rank, world_size: this process among the data-parallel ranks.
        seed: the run seed; the same seed gives the same stream.
        stage: an initial curriculum stage (see :meth:`DataControl.set_stage`).
        train: training (random crops/flips/frames/resolutions/patch sizes, token dropping, endless and
            resampled, ``batches_per_epoch`` per epoch) or evaluation (deterministic, one exact pass).
        tables: the run's class tables (mmvit/data/classes.py); default :func:`default_tables`.

    Returns:
        ``(loader, control)``: iterate the loader; ``control.set_stage``, ``control.state_dict``,
        ``control.load_state_dict`` and ``control.stats`` act on the running workers.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    cfg = resolve_data_config(data_cfg, split)
    tables = default_tables(data_cfg, split) if tables is None else tables
    ctx = SourceContext(allow_outside_root=cfg.allow_outside_root, allow_pipe_urls=cfg.allow_pipe_urls,
                        read_timeout_s=cfg.decode_timeout_s)
    sources = build_sources(cfg.sources, ctx, tables)
    make_stage(cfg, stage)
    bpe = None
    if train:
        bpe = cfg.batches_per_epoch or estimate_batches_per_epoch(cfg, sources, world_size)
    mp_ctx = multiprocessing.get_context(cfg.start_method)
    workers = max(1, cfg.num_workers)
    # Per worker: one replay position (a few hundred bytes per source), the waiting draw numbers, counts.
    capacity = (1 << 16) + workers * (16 * cfg.pack_buffer + 512 * len(sources) + (1 << 13))
    shared = SharedState(mp_ctx, restore_capacity=capacity)
    control = DataControl(cfg, shared, train=train, rank=rank, world_size=world_size, num_workers=workers,
                          seed=seed, batches_per_epoch=bpe)
    if stage:
        control.set_stage(stage)
    dataset = PackedStream(cfg, sources, shared, rank=rank, world_size=world_size, seed=seed, train=train,
                           batches_per_epoch=bpe, tasks=tables.tasks)
    kwargs: dict[str, Any] = {"num_workers": cfg.num_workers, "pin_memory": cfg.pin_memory}
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor,
                      multiprocessing_context=mp_ctx, worker_init_fn=worker_init)
    return PackedLoader(dataset, control, **kwargs), control

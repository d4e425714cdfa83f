"""State shared between the training loop and the loader workers: curriculum stages, resume points, stats.

Stages reach running workers through shared memory (no restart, works with 0, 1 or more workers and with
persistent workers). Each stage carries the index of the first batch it applies to; a worker announces
each batch index before building it, under a lock, and :meth:`DataControl.set_stage` gives the new stage
the first index no worker has started. Every batch therefore has exactly one stage, recorded in the
history, and the history is part of the data state, so a resumed run builds the same batches as the
uninterrupted one. Batches already built and waiting in the DataLoader's prefetch queue keep their old
stage: the change shows up within ``num_workers * prefetch_factor`` batches (``batch.stage_id`` says which
stage a batch was built with). A training run instead announces the schedule ahead (:meth:`DataControl.announce`):
each change at the batch index where the curriculum puts it, before any worker can reach that batch, so the
stage of a batch is a function of its index alone, not of how far the workers happen to have run ahead.

Resume: every batch carries its worker's state after building it (see stream.py). The loader records the
state of the last batch it handed out per worker; :meth:`state_dict` returns those plus the epoch and batch
counters, and the workers restore from them at the next ``iter(loader)``.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from mmvit.data.config import DataConfig
from mmvit.data.stage import Stage, make_stage

log = logging.getLogger("mmvit.data")


class SharedJSON:
    """A JSON document in a fixed-size shared buffer (readable by forked and spawned workers)."""

    def __init__(self, mp_ctx, capacity: int):
        self.capacity = capacity
        self.buf = mp_ctx.RawArray("c", capacity)
        self.size = mp_ctx.RawValue("q", 0)
        self.version = mp_ctx.RawValue("q", 0)

    def write(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        if len(data) > self.capacity:
            raise ValueError(f"shared data state of {len(data)} bytes exceeds its buffer of {self.capacity} bytes; "
                             f"lower data.pack_buffer")
        self.buf[:len(data)] = data
        self.size.value = len(data)
        self.version.value += 1

    def read(self) -> Any:
        return json.loads(bytes(self.buf[:self.size.value]).decode("utf-8")) if self.size.value else None


class SharedState:
    """Created in the main process before the workers start; the dataset carries it into them."""

    def __init__(self, mp_ctx, restore_capacity: int, stage_capacity: int = 1 << 18):
        self.lock = mp_ctx.Lock()
        self.max_started = mp_ctx.RawValue("q", -1)
        self.stages = SharedJSON(mp_ctx, stage_capacity)
        self.restore = SharedJSON(mp_ctx, restore_capacity)
        self._cache: tuple[int, list] = (-1, [])

    def begin_batch(self, g: int) -> tuple[int, dict]:
        """Announce that batch ``g`` is being built; returns ``(stage_id, stage dict)`` for it."""
        with self.lock:
            self.max_started.value = max(self.max_started.value, g)
            version = self.stages.version.value
            if self._cache[0] != version:
                self._cache = (version, self.stages.read() or [[0, 0, {}]])
        history = self._cache[1]
        _, sid, stage = max((e for e in history if e[0] <= g), key=lambda e: e[0], default=history[0])
        return sid, stage


class DataControl:
    """The handle the trainer holds next to the loader (see ``build_loader``)."""

    def __init__(self, cfg: DataConfig, shared: SharedState, *, train: bool, rank: int, world_size: int,
                 num_workers: int, seed: int, batches_per_epoch: int | None):
        self.cfg, self.shared, self.train = cfg, shared, train
        self.rank, self.world_size, self.num_workers, self.seed = rank, world_size, num_workers, seed
        self.batches_per_epoch = batches_per_epoch
        self.epoch, self.i, self.g = 0, 0, 0   # epoch, batches handed out in it, in total
        self.next_stage_id = 1
        # [first batch index, stage id, stage dict]: the full stage until a curriculum sets another.
        self.history: list = [[0, 0, make_stage(cfg).to_dict()]]
        self.worker_states: dict[str, dict] = {}
        self.skip_counts: dict[str, dict] = {}
        self.padding = collections.deque(maxlen=100)
        self.examples = collections.deque(maxlen=100)
        with shared.lock:
            shared.stages.write(self.history)

    # --- curriculum ----------------------------------------------------------------------------------------
    def set_stage(self, stage: Stage | dict | None) -> None:
        """Apply a curriculum stage (a :class:`Stage`, or a dict of its keys with the config's values for the
        missing ones) from the next batch no worker has started. Setting the current stage is a no-op."""
        stage = make_stage(self.cfg, stage).to_dict()  # validated here, in the caller's process
        with self.shared.lock:
            eff = max(self.shared.max_started.value + 1, self.g)
            # Entries from eff on never applied to a started batch: the new stage replaces them.
            history = [e for e in self.history if e[0] < eff]
            if not history or history[-1][2] != stage:
                history.append([eff, self.next_stage_id, stage])
                self.next_stage_id += 1
            # Entries before the one that applies to the next batch handed out are no longer needed.
            first = max((k for k, e in enumerate(history) if e[0] <= self.g), default=0)
            self.history = history[first:]
            self.shared.stages.write(self.history)

    @property
    def max_ahead(self) -> int:
        """How many batches past the last one handed out the workers may have started: the DataLoader keeps
        ``prefetch_factor`` requests per worker in flight, and a worker builds a batch only when asked."""
        return self.cfg.num_workers * self.cfg.prefetch_factor if self.cfg.num_workers > 0 else 0

    def announce(self, changes: list[tuple[int, Stage | dict]]) -> bool:
        """Set the stages from ``changes[0][0]`` on: ``[(first batch index, stage), ...]`` in increasing
        index order, each stage applying until the next one's index (the last one onwards). Batches a worker
        has already started keep what they were built with: returns False if that contradicts ``changes``
        (announced too late; the new stage then applies from the next unstarted batch). Announcing the same
        schedule again is a no-op (the stage ids stay)."""
        specs = [(int(b), make_stage(self.cfg, st).to_dict()) for b, st in changes]  # validated here
        if not specs:
            return True
        with self.shared.lock:
            started = max(self.shared.max_started.value + 1, self.g)
            start = specs[0][0]
            # Entries in force before the announced range, or for batches already started, stay as they are.
            history = [e for e in self.history if e[0] < max(start, started)]
            old = {(e[0], json.dumps(e[2], sort_keys=True)): e for e in self.history}
            on_time = True
            for k, (b, spec) in enumerate(specs):
                end = specs[k + 1][0] if k + 1 < len(specs) else None
                if b < started:
                    # Batches b .. started-1 were started with whatever the history said: it must agree.
                    upto = started if end is None else min(end, started)
                    on_time &= all(self._spec_at(g) == spec for g in range(b, upto))
                    if end is not None and end <= started:
                        continue
                    b = started
                if history and history[-1][2] == spec:
                    continue
                entry = old.get((b, json.dumps(spec, sort_keys=True)))
                if entry is None:
                    entry = [b, self.next_stage_id, spec]
                    self.next_stage_id += 1
                history.append(entry)
            first = max((k for k, e in enumerate(history) if e[0] <= self.g), default=0)
            self.history = history[first:]
            self.shared.stages.write(self.history)
        return on_time

    def _spec_at(self, g: int) -> dict:
        return max((e for e in self.history if e[0] <= g), key=lambda e: e[0], default=self.history[0])[2]

    @property
    def stage(self) -> Stage:
        """The latest stage set (the one new batches get)."""
        return make_stage(self.cfg, self.history[-1][2])

    # --- loader hooks ----------------------------------------------------------------------------------------
    def begin_iter(self) -> None:
        """Called by the loader at ``iter(loader)``: where the workers start and from which states."""
        if not self.train:
            # Every evaluation pass starts from batch 0 with the latest stage.
            self.epoch, self.i, self.g = 0, 0, 0
            self.worker_states, self.skip_counts = {}, {}
            self.history = [[0, self.history[-1][1], self.history[-1][2]]]
            with self.shared.lock:
                self.shared.stages.write(self.history)
        elif self.batches_per_epoch is not None and self.i >= self.batches_per_epoch:
            self.epoch, self.i = self.epoch + 1, 0
        with self.shared.lock:
            self.shared.max_started.value = self.g - 1
            self.shared.restore.write({"epoch": self.epoch, "i0": self.i, "g0": self.g,
                                       "states": self.worker_states})

    def record(self, batch: Any) -> None:
        """Called by the loader for every batch it hands out."""
        self.i += 1
        self.g += 1
        role = str(getattr(batch, "role", 0))
        if getattr(batch, "worker_state", None) is not None:
            self.worker_states[role] = batch.worker_state
        if getattr(batch, "skip_counts", None) is not None:
            self.skip_counts[role] = batch.skip_counts
        self.padding.append(float(batch.padding_fraction))
        self.examples.append(int(batch.num_examples))

    def record_counts(self, end: Any) -> None:
        """Called by the loader for an evaluation worker's final counts (``stream.PassEnd``)."""
        self.skip_counts[str(end.role)] = end.skip_counts

    # --- resume ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The data position after the last batch handed out (JSON-able)."""
        return {"version": 1, "train": self.train, "epoch": self.epoch, "i": self.i, "g": self.g,
                "layout": {"world_size": self.world_size, "num_workers": self.num_workers, "seed": self.seed},
                "worker_states": json.loads(json.dumps(self.worker_states)),
                "history": json.loads(json.dumps(self.history)), "next_stage_id": self.next_stage_id,
                "skip_counts": json.loads(json.dumps(self.skip_counts))}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`. With another world size, worker count or seed the counters and
        the curriculum stage carry over but the sample order starts afresh (logged)."""
        self.epoch, self.i, self.g = int(state["epoch"]), int(state["i"]), int(state["g"])
        self.history = state["history"]
        self.next_stage_id = int(state["next_stage_id"])
        layout = {"world_size": self.world_size, "num_workers": self.num_workers, "seed": self.seed}
        if state.get("layout") == layout:
            self.worker_states = dict(state["worker_states"])
            self.skip_counts = dict(state.get("skip_counts", {}))
        else:
            log.warning("data state saved with %s, loading with %s: the sample order restarts (exact resume "
                        "needs the same world_size, num_workers and seed)", state.get("layout"), layout)
            self.worker_states, self.skip_counts = {}, {}
        with self.shared.lock:
            self.shared.max_started.value = self.g - 1
            self.shared.stages.write(self.history)

    # --- reporting -------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Bad samples per cause (all workers), good samples, and padding of the recent batches."""
        bad: collections.Counter = collections.Counter()
        good = 0
        failures: list = []
        for counts in self.skip_counts.values():
            bad.update(counts.get("bad", {}))
            good += int(counts.get("good", 0))
            failures += counts.get("failures", [])
        pad = list(self.padding)
        return {"bad": dict(bad), "bad_total": sum(bad.values()), "good_total": good, "failures": failures,
                "padding_last": pad[-1] if pad else None,
                "padding_mean": sum(pad) / len(pad) if pad else None,
                "examples_per_batch": sum(self.examples) / len(self.examples) if self.examples else None,
                "epoch": self.epoch, "batch_in_epoch": self.i, "batches": self.g,
                "batches_per_epoch": self.batches_per_epoch, "stage_id": self.history[-1][1]}

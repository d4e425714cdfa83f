"""The run logger: ``metrics.jsonl``, TensorBoard (``tb/``), ``train.log`` and rank 0's progress bar.

Every record is one JSON line ``{"kind": "train" | "eval" | "stage" | "event", "step": N, "time": ..., ...}``.
A resumed run first drops the records at or after its start step (steps that the killed run did after its
last checkpoint and that are about to be redone), so the file always describes one consistent run.

Messages go through Python's ``logging`` (logger ``mmvit``, so the data and evaluation packages' messages
land in the same places): on rank 0 to stdout and ``train.log``, written above the tqdm bar
(``tqdm.contrib.logging.logging_redirect_tqdm``); other ranks print warnings only, prefixed with their rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from typing import Any

from tqdm import tqdm

_FORMAT = "[%(asctime)s] %(message)s"


def _truncate(path: str, start_step: int) -> None:
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by kill -9
            continue
        if rec.get("step", -1) < start_step or rec.get("kind") == "event":
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


class RunLog:
    def __init__(self, run_dir: str, *, rank: int, start_step: int, total_steps: int, progress: bool = True,
                 fresh: bool = True):
        self.rank, self.enabled = rank, rank == 0
        self.bar = None
        self.tb = None
        self._jsonl = None
        self._stack = contextlib.ExitStack()
        self.logger = logging.getLogger("mmvit")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._handlers: list[logging.Handler] = []
        if not self.enabled:
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
            self._add(handler)
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        if fresh and os.path.exists(path):
            os.remove(path)
        _truncate(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        console = logging.StreamHandler(sys.stdout)
        log_file = logging.FileHandler(os.path.join(run_dir, "train.log"), mode="w" if fresh else "a")
        for h in (console, log_file):
            h.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
            self._add(h)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step or None)
        except ImportError:  # tensorboard is optional
            self.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        if progress:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stdout,
                            mininterval=0.5, smoothing=0.1)
            self._stack.enter_context(logging_redirect_tqdm(loggers=[self.logger]))

    def _add(self, handler: logging.Handler) -> None:
        self.logger.addHandler(handler)
        self._handlers.append(handler)

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warning(self, msg: str) -> None:
        """Printed by every rank (prefixed with it), logged by rank 0."""
        self.logger.warning(msg if not self.enabled else f"WARNING: {msg}")

    def record(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        import time

        rec = {"kind": kind, "step": int(step), "time": time.time(), **values}
        self._jsonl.write(json.dumps(rec, default=float) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def progress(self, step: int, **postfix: Any) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                             refresh=False)
        self.bar.update(step - self.bar.n)  # tqdm derives the rate and the ETA from these updates

    def close(self) -> None:
        self._stack.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        for h in self._handlers:
            self.logger.removeHandler(h)
            h.close()

"""The run's record: ``metrics.jsonl``, TensorBoard (``tb/``), ``train.log`` and rank 0's tqdm bar.

Every record is one JSON line ``{"kind": "train" | "eval" | "stage" | "event", "step": N, "time": ..., ...}``.
A resumed run first drops the records at or after its start step (steps that the killed run did after its
last checkpoint and that are about to be redone), so the file always describes one consistent run.
Ranks other than 0 write nothing but warnings.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from tqdm import tqdm


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
        self._log = self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        if fresh and os.path.exists(path):
            os.remove(path)
        _truncate(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        self._log = open(os.path.join(run_dir, "train.log"), "a" if not fresh else "w", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step or None)
        except ImportError:  # tensorboard is optional
            self.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stdout,
                            mininterval=0.5, smoothing=0.1)

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)
        if self._log is not None:
            self._log.write(line + "\n")

    def warning(self, msg: str) -> None:
        """Printed by every rank (prefixed with it), logged by rank 0."""
        if self.enabled:
            self.info(f"WARNING: {msg}")
        else:
            print(f"[rank {self.rank}] WARNING: {msg}", file=sys.stderr, flush=True)

    def record(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
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
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        for f in (self._jsonl, self._log):
            if f is not None:
                f.close()

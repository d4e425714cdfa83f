"""Preemption-safe stopping: the stop signals, the flag the step loop polls, and the watchdog.

SIGTERM, SIGINT and SIGUSR1 (what SLURM's ``--signal``, ``scancel``, ``timeout`` and the launchers send) only
set a flag: the loop all-reduces it with the step's metrics, so every rank stops after the same step, saves a
checkpoint there (marker last) and exits 0. Whichever processes the signal reaches (one rank, all ranks, the
whole process group with the loader workers), the outcome is the same: the workers ignore the signals
(:func:`ignore_stop_signals`, their rank shuts them down) and one rank's flag is enough for all.

Bounded time: the first signal arms a watchdog thread; if the process has not finished ``stop_timeout_s``
later (a hung collective, a dead peer, a slow file system), it exits with :data:`EXIT_STOP_TIMEOUT` without
writing a marker, so ``--resume auto`` falls back to the previous complete checkpoint. The watchdog waits
for :meth:`Stopper.critical` sections (writing the marker, pruning old checkpoints) to end before it exits.

Repeated signals only repeat the request (the ``deepspeed`` launcher answers a Ctrl-C with a SIGTERM to
ranks that already have the SIGINT; ``srun`` and the launchers forward to every rank). A second SIGINT
outside a checkpoint save stops at once without a checkpoint (Ctrl-C twice); during a save it is only
counted, so a save is never cut in the middle by a signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from mmvit.data.loader import STOP_SIGNALS, worker_init as ignore_stop_signals  # noqa: F401  (re-exported)

EXIT_STOP_TIMEOUT = 4


class Stopper:
    """Installs the stop handlers (main thread only); ``stopper()`` says whether a stop was requested here."""

    def __init__(self, timeout_s: float = 60.0, log=None):
        self.timeout_s = float(timeout_s)
        self.requested = False
        self.received: list[str] = []          # signal names in arrival order
        self.requested_at: float | None = None
        self.log = log                         # a logging.Logger, set once the run log exists
        self._saving = 0
        self._interrupts = 0
        self._critical = threading.Lock()
        self._armed = threading.Event()
        self._finished = threading.Event()
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        threading.Thread(target=self._watch, name="mmvit-stop-watchdog", daemon=True).start()

    def _handle(self, signum, frame) -> None:
        self.received.append(signal.Signals(signum).name)
        if not self.requested:
            self.requested, self.requested_at = True, time.monotonic()
            self._armed.set()
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1 and not self._saving:
                raise KeyboardInterrupt("second Ctrl-C: stopping without a checkpoint")

    def __call__(self) -> bool:
        return self.requested

    @contextlib.contextmanager
    def saving(self):
        """A checkpoint save: further signals are only counted."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1

    @contextlib.contextmanager
    def critical(self):
        """A few file operations the watchdog must not cut (the marker rename, pruning old checkpoints)."""
        with self._critical:
            yield

    def finish(self) -> None:
        """The run is over (checkpoint written, processes about to exit): disarm the watchdog."""
        self._finished.set()

    def _watch(self) -> None:
        self._armed.wait()
        if self._finished.wait(self.timeout_s):
            return
        # Past the bound: leave without a marker. Wait (briefly) for a marker write or prune in progress.
        self._critical.acquire(timeout=30.0)
        msg = (f"stop requested by {', '.join(self.received)} but not finished within train.stop_timeout_s="
               f"{self.timeout_s:g}s (a hung collective or a dead peer?): exiting {EXIT_STOP_TIMEOUT} without a "
               f"new checkpoint marker; --resume auto continues from the last complete checkpoint")
        try:
            if self.log is not None:
                self.log.error(msg)
            print(f"[pid {os.getpid()}] {msg}", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_STOP_TIMEOUT)

"""Time limits in process: blocking work runs in a helper thread that is abandoned when its limit passes.

A C call (Pillow decoding an image, PyAV or decord inside FFmpeg, a file read on a stalled network mount)
cannot be interrupted from Python: a signal handler only runs between bytecodes, and a thread cannot be
killed. What can be done without a child process is to not wait for it: :func:`call` runs the work in a
helper thread, waits at most ``timeout_s``, and on expiry raises :class:`ReadTimeout` (a
:class:`~mmvit.data.errors.BadSample` with cause ``timeout``) while the thread is left to finish, or not,
on its own. This works because these libraries release the GIL while they decode or read (Pillow's decoders,
PyAV's ``nogil`` FFmpeg calls, decord's ctypes calls and file ``read`` all do; a call that kept the GIL
would block the waiting thread too, and only a child process could stop it, see isolate.py).

An abandoned thread keeps its memory and possibly a core. They are bounded: while :data:`MAX_STUCK`
abandoned threads of this process are still running, the next call raises
:class:`~mmvit.data.errors.TooManyStuckThreads` naming the files they hang on, instead of leaking more. An
abandoned thread that finishes frees its place. Helper threads are reused between calls (a hand-over
costs tens of microseconds); state is per process, so forked DataLoader workers start clean.

:class:`DeadlineReader` puts the same limit on each read of a file object (a webdataset shard stream),
reading ahead in large chunks so that tarfile's small reads cost no thread hand-over.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from mmvit.data.errors import BadSample, TooManyStuckThreads

MAX_STUCK = 4  # abandoned threads still running in one process before calls refuse to start more
_IDLE_KEPT = 2  # idle helper threads kept for reuse


class ReadTimeout(BadSample):
    """A read or decode that did not finish within its time limit; its thread was abandoned."""

    def __init__(self, path: str, detail: str):
        super().__init__("timeout", path, detail)


class _Job:
    __slots__ = ("args", "done", "error", "fn", "kwargs", "result", "then")

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.then: Callable[[], Any] | None = None  # run by the helper after the job, if it was abandoned

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # noqa: BLE001  (handed to the waiting thread)
            self.error = e
        finally:
            self.done.set()


class _Helper:
    """One daemon thread running jobs from its queue until told to stop."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.name = ""  # what the current job reads, for error messages
        self.thread = threading.Thread(target=self._loop, name="mmvit-deadline", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.run()
            if job.then is not None:
                try:
                    job.then()
                except Exception:  # noqa: BLE001, S110  (clean-up of abandoned work is best effort)
                    pass

    def stop(self) -> None:
        self.jobs.put(None)


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[_Helper] = []
        self.stuck: list[_Helper] = []


_state = _State()


def _current() -> _State:
    global _state
    if _state.pid != os.getpid():  # a forked child: the parent's threads do not exist here
        _state = _State()
    return _state


def stuck_threads() -> list[str]:
    """What the abandoned helper threads of this process that are still running were reading."""
    state = _current()
    with state.lock:
        state.stuck = [h for h in state.stuck if h.thread.is_alive()]
        return [h.name for h in state.stuck]


def call(fn: Callable, *args: Any, timeout_s: float | None, name: str, what: str = "reading",
         then: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with a time limit; its exceptions pass through unchanged.

    Args:
        timeout_s: seconds to wait; ``None`` runs ``fn`` in the calling thread without a limit.
        name: the file or sample, for the error message.
        what: what ``fn`` does, for the error message.
        then: run in the helper thread after ``fn`` returns if the call was abandoned (e.g. closing the file).

    Raises:
        ReadTimeout: ``fn`` did not return within ``timeout_s`` (it keeps running in its thread).
        TooManyStuckThreads: :data:`MAX_STUCK` abandoned threads are still running.
    """
    if timeout_s is None:
        return fn(*args, **kwargs)
    state = _current()
    with state.lock:
        state.stuck = [h for h in state.stuck if h.thread.is_alive()]
        if len(state.stuck) >= MAX_STUCK:
            names = ", ".join(h.name for h in state.stuck)
            raise TooManyStuckThreads(
                f"{len(state.stuck)} reads or decodes are still running after their time limit in this process "
                f"({names}); C code cannot be interrupted in process. Check the storage for stalls, or use "
                f"decode_isolation: process so that a hung decoder can be killed.")
        helper = state.idle.pop() if state.idle else _Helper()
    helper.name = name
    job = _Job(fn, args, kwargs)
    helper.jobs.put(job)
    if job.done.wait(max(0.0, float(timeout_s))):
        with state.lock:
            if len(state.idle) < _IDLE_KEPT:
                state.idle.append(helper)
            else:
                helper.stop()
        if job.error is not None:
            raise job.error
        return job.result
    job.then = then
    helper.stop()  # the thread exits once the stuck job returns, if it ever does
    with state.lock:
        state.stuck.append(helper)
        n = len(state.stuck)
    if job.done.is_set() and then is not None:  # it finished in the meantime: run the clean-up here
        then()
    raise ReadTimeout(name, f"{what} took longer than {timeout_s:g} s; its thread was abandoned "
                            f"({n} of at most {MAX_STUCK} abandoned threads running)")


class DeadlineReader:
    """A read-only file object whose every read of the underlying file must finish within ``timeout_s``.

    Reads ahead ``chunk`` bytes at a time in a helper thread (see :func:`call`) and serves smaller reads
    from that buffer. A read past its limit raises :class:`ReadTimeout` (cause ``timeout``, a ``BadSample``
    and not an ``OSError``, so that tar readers do not take it for damage and read on); every later read
    raises it again, and the underlying file is closed by the abandoned thread if its read ever returns.

    Args:
        f: an object with ``read(n)`` (and ``close()``), e.g. an open shard or a ``webdataset.gopen`` stream.
        timeout_s: seconds per underlying read; ``None`` for no limit.
        name: the shard's URL or path, for the error.
        chunk: bytes per underlying read.
    """

    def __init__(self, f, timeout_s: float | None, name: str, chunk: int = 1 << 20):
        self.f, self.timeout_s, self.name, self.chunk = f, timeout_s, name, int(chunk)
        self._buf = bytearray()
        self._eof = False
        self._failed: ReadTimeout | None = None
        self.closed = False

    def _fill(self, n: int) -> None:
        """Read until ``n`` bytes are buffered (``n < 0``: until the end)."""
        while not self._eof and (n < 0 or len(self._buf) < n):
            if self._failed is not None:
                raise self._failed
            try:
                data = call(self.f.read, self.chunk, timeout_s=self.timeout_s, name=self.name,
                            what=f"a read of {self.chunk} bytes", then=self.f.close)
            except ReadTimeout as e:
                self._failed = e
                raise
            if not data:
                self._eof = True
            else:
                self._buf += data

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed DeadlineReader")
        n = -1 if n is None else int(n)
        self._fill(n)
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:n])
            del self._buf[:n]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._failed is None:  # a stuck read owns the file: its thread closes it when the read returns
            self.f.close()

    def __enter__(self) -> DeadlineReader:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

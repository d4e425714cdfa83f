"""A decoder in a child process, killed and restarted when one sample runs past its time limit.

Why a process: decord's ``get_batch`` can hang inside C++ while holding the GIL, so neither a thread-based
timeout nor a Python signal handler (which only runs between bytecodes) can interrupt it, and a codec
segfault would take the DataLoader worker down with it. A child process can always be killed.

DataLoader workers are daemonic and may not start ``multiprocessing`` children, so the child is a plain
``subprocess`` running ``backends.py`` as a script (no torch import: it starts in a fraction of a second),
speaking length-prefixed pickles over its stdin/stdout. One child per worker, started on first use, reused
for every sample, restarted after a timeout or a crash. It exits by itself when its parent's pipe closes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
import weakref
from typing import Any

from mmvit.data.readers import backends
from mmvit.data.readers.backends import MediaError

# Extra time granted beyond the sample's limit for the pipe round trip before the child is killed.
_GRACE_S, _GRACE_FRACTION = 1.0, 0.1
# Seconds the child may take to import its libraries and report ready.
_START_S = 60.0


class IsolatedDecoder:
    """Run :func:`backends.run_request` in a child process under a hard time limit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._pid_owner = os.getpid()
        self.restarts = 0
        # Holds the attribute dict, not self: the child is killed when this object dies or at exit.
        weakref.finalize(self, IsolatedDecoder._kill, self.__dict__)

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", backends.__file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self._pid_owner = os.getpid()
        try:
            ready = self._read(self._proc.stdout.fileno(), time.monotonic() + _START_S)
        except (MediaError, OSError, EOFError) as e:
            self.close()
            raise MediaError("decoder_crash", f"decoder process did not start: {e}") from None
        if ready != ("ready",):
            self.close()
            raise MediaError("decoder_crash", f"decoder process sent {ready!r} instead of ready")
        return self._proc

    @staticmethod
    def _kill(state: dict) -> None:
        proc = state.get("_proc")
        if proc is None or state.get("_pid_owner") != os.getpid():
            return  # a forked copy must not kill its parent's child
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=5)
        state["_proc"] = None

    def close(self) -> None:
        IsolatedDecoder._kill(self.__dict__)

    def __call__(self, request: dict, timeout_s: float) -> Any:
        """Send one request; raise :class:`MediaError` ("timeout", "decoder_crash" or the child's cause)."""
        proc = self._proc
        if proc is None or proc.poll() is not None or self._pid_owner != os.getpid():
            proc = self._start()
        request = dict(request, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s + min(_GRACE_S, _GRACE_FRACTION * timeout_s)
        try:
            backends._write_msg(proc.stdin, request)
            reply = self._read(proc.stdout.fileno(), deadline)
        except MediaError:
            self.close()
            self.restarts += 1
            raise
        except (OSError, EOFError, ValueError) as e:
            self.close()
            self.restarts += 1
            raise MediaError("decoder_crash", f"decoder process died ({type(e).__name__}: {e})") from None
        if reply[0] == "ok":
            return reply[1]
        raise MediaError(reply[1], reply[2])

    @staticmethod
    def _read(fd: int, deadline: float) -> Any:
        """Read one message from ``fd`` before ``deadline`` (raw reads: no buffered data hidden from select)."""

        def read_exact(n: int) -> bytes:
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise MediaError("timeout", "decode_timeout_s exceeded (decoder process killed)")
                chunk = os.read(fd, min(n - got, 1 << 20))
                if not chunk:
                    raise EOFError("decoder process closed its pipe")
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        (size,) = struct.unpack("<Q", read_exact(8))
        return pickle.loads(read_exact(size))

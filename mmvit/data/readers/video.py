"""Video reading: backend choice (decord | pyav | auto), probing, time limits and decode isolation.

``read_video`` is the plain function (the benchmark tool calls it); :class:`VideoDecoder` is what a loader
worker holds: a bounded probe cache, the backend, and optionally a child process for decoding.

Time limits (``decode_timeout_s``), per isolation mode:
- ``process``: probe and decode run in a child process (see isolate.py) that is killed when the limit
  passes; a hang inside decord or a codec crash costs one sample and a restart (~0.3 s), never the worker.
- ``none``: PyAV checks the deadline between frames and packets, so it stops within one frame's decode
  time. decord's ``get_batch`` is a single C call that cannot be interrupted in process: it is only
  guarded by the frame-count check, and a sample that returned after its limit is dropped as a timeout.
- ``auto`` (default): ``process`` for decord, ``none`` for PyAV.

A file decord fails on (an error, not a timeout) is decoded again with PyAV before it is called bad:
decord 0.6 refuses some frame widths that PyAV reads fine.
"""

from __future__ import annotations

import importlib.util
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from mmvit.data.errors import BadSample
from mmvit.data.readers import backends
from mmvit.data.readers.backends import MediaError

Backend = Literal["decord", "pyav", "auto"]
_NO_LIMIT_S = 24 * 3600.0  # a process-isolated decode without decode_timeout_s
Isolation = Literal["none", "process", "auto"]


def resolve_backend(backend: Backend) -> Literal["decord", "pyav"]:
    """``auto`` is decord when it is installed, PyAV otherwise."""
    if backend == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    if backend not in ("decord", "pyav"):
        raise ValueError(f"video_backend must be decord, pyav or auto, got {backend!r}")
    return backend


def read_video(path: str | bytes, indices: Sequence[int], backend: Backend = "auto", *, threads: int = 1,
               timeout_s: float | None = None) -> torch.Tensor:
    """Frames ``indices`` of a video file (or its encoded bytes) as uint8 ``[T, H, W, 3]``, in process.

    Exactly the named backend decodes (no fallback to PyAV), so that it can be measured and compared.

    Raises:
        BadSample: the file is missing, empty, not a video, corrupt, shorter than an index, or too slow.
    """
    decoder = VideoDecoder(backend=backend, threads=threads, timeout_s=timeout_s, isolation="none", fallback=False)
    name = path if isinstance(path, str) else "<bytes>"
    info = decoder.probe(path, name)
    return torch.from_numpy(decoder.read(path, name, indices, info))


class VideoDecoder:
    """Probe and decode videos for one loader worker.

    Args:
        backend: ``decord``, ``pyav`` or ``auto``.
        threads: decoder threads (keep 1-2 per worker: workers already run in parallel).
        timeout_s: per-sample time limit for probe and decode each; ``None`` for none.
        isolation: ``none``, ``process`` or ``auto`` (see the module docstring).
        cache_size: probed files remembered (path -> frame count, size, timestamps).
        fallback: when decord fails on a file, decode it with PyAV before calling it bad (decord 0.6 refuses
            some frame widths, e.g. 48 and 72 pixels, with "DECORDArrayCopyFromTo: The size must exactly
            match"). ``fallbacks`` counts the files rescued this way.
    """

    def __init__(self, backend: Backend = "auto", threads: int = 1, timeout_s: float | None = None,
                 isolation: Isolation = "auto", cache_size: int = 4096, fallback: bool = True):
        self.backend = resolve_backend(backend)
        if isolation == "auto":
            isolation = "process" if self.backend == "decord" else "none"
        if isolation not in ("none", "process"):
            raise ValueError(f"decode_isolation must be none, process or auto, got {isolation!r}")
        self.isolation = isolation
        self.threads = threads
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self.fallback = fallback
        self.fallbacks = 0
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._child = None  # IsolatedDecoder, created in the process that uses it

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_child"] = None  # a child process belongs to the process that started it
        return state

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None

    def _run(self, request: dict, name: str) -> Any:
        start = time.monotonic()
        try:
            if self.isolation == "process":
                if self._child is None:
                    from mmvit.data.readers.isolate import IsolatedDecoder

                    self._child = IsolatedDecoder()
                return self._child(request, self.timeout_s if self.timeout_s is not None else _NO_LIMIT_S)
            out = backends.run_request(dict(request, timeout_s=self.timeout_s))
        except MediaError as e:
            raise BadSample(e.cause, name, e.detail) from None
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001  (anything unexpected in one file is that file's problem)
            raise BadSample("other", name, f"{type(e).__name__}: {e}"[:200]) from None
        if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
            raise BadSample("timeout", name, f"took {time.monotonic() - start:.1f} s > decode_timeout_s")
        return out

    def probe(self, src: str | bytes, name: str, key: str | None = None) -> dict:
        """``{"width", "height", "frames", "fps", "pts", "keyframes", ...}``, remembered under ``key`` (default:
        the path; bytes without a key are not remembered)."""
        key = key if key is not None else (src if isinstance(src, str) else None)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        info = self._run({"op": "probe", "src": src}, name)
        if key is not None:
            self._cache[key] = info
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return info

    def read(self, src: str | bytes, name: str, indices: Sequence[int], info: dict | None = None) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` for ``indices``.

        ``info`` comes from :meth:`probe` or a webdataset JSON sidecar (probed here if omitted). Without
        timestamps (sidecars carry none) PyAV decodes from the start instead of seeking.
        """
        info = info if info is not None else self.probe(src, name)
        indices = [int(i) for i in indices]
        pyav = {"op": "pyav", "src": src, "indices": indices, "pts": info.get("pts"),
                "keyframes": info.get("keyframes"), "threads": self.threads}
        if self.backend == "decord":
            request = {"op": "decord", "src": src, "indices": indices, "frames": info["frames"],
                       "threads": self.threads}
            try:
                frames = self._run(request, name)
            except BadSample as e:
                if not self.fallback or e.cause not in ("corrupt", "other"):
                    raise
                frames = self._run(pyav, name)  # a file PyAV cannot read either is bad with PyAV's cause
                self.fallbacks += 1
        else:
            frames = self._run(pyav, name)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(indices):
            raise BadSample("corrupt", name, f"decoder returned frames of shape {frames.shape}")
        return frames

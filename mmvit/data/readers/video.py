"""Video reading: backend choice (decord | pyav | auto), probing, time limits, decode isolation, fallback.

``read_video`` is the plain function (the benchmark tool calls it); :class:`VideoDecoder` is what a loader
worker holds: a bounded probe cache, the backend, and optionally a child process for decoding.
``VideoDecoder.read(..., size=)`` scales in the decoder (see backends.py and geometry.py for choosing the
size); ``read_views`` decodes the frames of several clips of one video in one pass.

Time limits (``decode_timeout_s``), per isolation mode:
- ``process``: probe and decode run in a child process (see isolate.py) that is killed when the limit
  passes; a hang inside decord or a codec crash costs one sample and a restart (~0.3 s), never the worker.
- ``none``: probe and decode run in a helper thread that is abandoned when the limit passes
  (deadline.py): the sample is skipped as ``timeout`` and the worker goes on; a few threads stuck for good
  stop the worker with ``TooManyStuckThreads``. PyAV also checks the deadline between frames and packets,
  so it usually stops by itself within one frame's decode time. A codec crash takes the worker down.
- ``auto`` (default): ``process`` for decord, ``none`` for PyAV.

Fallback: with ``video_backend: auto`` (decord when installed), a file decord refuses or fails on (any cause
but a missing or empty file) is decoded again with PyAV before it is called bad, and a bad file's reason
names both failures. decord 0.6 refuses some frame widths that PyAV reads fine, and animated GIFs
("broken metadata"); frames of a width decord is known to refuse go to PyAV directly (no wasted decode).
An explicit ``decord`` or ``pyav`` backend never falls back, so that each can be measured and trusted.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from mmvit.data.errors import BadSample
from mmvit.data.readers import backends, deadline
from mmvit.data.readers.backends import MediaError

Backend = Literal["decord", "pyav", "auto"]
_NO_LIMIT_S = 24 * 3600.0  # a process-isolated decode without decode_timeout_s
Isolation = Literal["none", "process", "auto"]
# Extra time given to an in-process request past its limit, so that PyAV's own deadline check (which names
# the frame it stopped at) fires before the helper thread is abandoned.
_GRACE_S, _GRACE_FRACTION = 1.0, 0.1
_NO_RETRY = ("missing_file", "empty_file")  # no other decoder can help with these
log = logging.getLogger("mmvit.data")


def resolve_video_backend(backend: Backend) -> Literal["decord", "pyav"]:
    """``auto`` is decord when it is installed, PyAV otherwise."""
    if backend == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    if backend not in ("decord", "pyav"):
        raise ValueError(f"video_backend must be decord, pyav or auto, got {backend!r}")
    return backend


def read_video(path: str | bytes, indices: Sequence[int], backend: Backend = "auto", *, threads: int = 1,
               timeout_s: float | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
    """Frames ``indices`` of a video file (or its encoded bytes) as uint8 ``[T, h, w, 3]``, in process.

    ``size``: full-frame ``(h, w)`` to scale to in the decoder (only down; see ``backends.output_size``).
    ``backend="auto"`` falls back to PyAV where decord fails; ``decord`` and ``pyav`` decode with exactly
    that backend.

    Raises:
        BadSample: the file is missing, empty, not a video, corrupt, shorter than an index, or too slow.
    """
    decoder = VideoDecoder(backend=backend, threads=threads, timeout_s=timeout_s, isolation="none")
    name = path if isinstance(path, str) else "<bytes>"
    info = decoder.probe(path, name)
    return torch.from_numpy(decoder.read(path, name, indices, info, size=size))


class VideoDecoder:
    """Probe and decode videos for one loader worker.

    Args:
        backend: ``decord``, ``pyav`` or ``auto``.
        threads: decoder threads (keep 1-2 per worker: workers already run in parallel).
        timeout_s: per-sample time limit for probe and decode each; ``None`` for none.
        isolation: ``none``, ``process`` or ``auto`` (see the module docstring).
        cache_size: probed files remembered (path -> frame count, size, timestamps).
        fallback: retry with PyAV where decord fails (see the module docstring); default: only for
            ``backend="auto"``. ``fallbacks`` counts the files rescued this way, ``fallback_causes`` the
            decord causes it rescued them from.
    """

    def __init__(self, backend: Backend = "auto", threads: int = 1, timeout_s: float | None = None,
                 isolation: Isolation = "auto", cache_size: int = 4096, fallback: bool | None = None):
        self.backend = resolve_video_backend(backend)
        if isolation == "auto":
            isolation = "process" if self.backend == "decord" else "none"
        if isolation not in ("none", "process"):
            raise ValueError(f"decode_isolation must be none, process or auto, got {isolation!r}")
        self.isolation = isolation
        self.threads = threads
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self.fallback = (backend == "auto") if fallback is None else bool(fallback)
        self.fallbacks = 0
        self.fallback_causes: dict[str, int] = {}
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
            limit = self.timeout_s
            wait = None if limit is None else limit + min(_GRACE_S, _GRACE_FRACTION * limit)
            out = deadline.call(backends.run_request, dict(request, timeout_s=limit), timeout_s=wait, name=name,
                                what="probing" if request["op"] == "probe" else f"{request['op']} decoding")
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

    def read(self, src: str | bytes, name: str, indices: Sequence[int], info: dict | None = None,
             size: Sequence[int] | None = None) -> np.ndarray:
        """uint8 ``[T, h, w, 3]`` for ``indices`` (repeats allowed), each frame decoded once.

        ``info`` comes from :meth:`probe` or a webdataset JSON sidecar (probed here if omitted). Without
        timestamps (sidecars carry none) PyAV decodes from the start instead of seeking. ``size`` is the
        full-frame ``(h, w)`` to scale to while converting to RGB; each side is capped at the frame's own
        (``backends.output_size``), so ``(h, w)`` is exactly ``size`` whenever ``size`` is a downscale.
        """
        info = info if info is not None else self.probe(src, name)
        indices = [int(i) for i in indices]
        size = None if size is None else (int(size[0]), int(size[1]))
        native = (int(info["height"]), int(info["width"])) if "height" in info and "width" in info else None
        pyav = {"op": "pyav", "src": src, "indices": indices, "pts": info.get("pts"),
                "keyframes": info.get("keyframes"), "threads": self.threads, "size": size}
        if self.backend == "pyav":
            frames = self._run(pyav, name)
        else:
            request = {"op": "decord", "src": src, "indices": indices, "frames": info["frames"],
                       "threads": self.threads, "size": size, "native": native}
            out_w = backends.output_size(size, native)[1] if native is not None else None
            if self.fallback and out_w is not None and backends.decord_refuses_width(out_w):
                frames = self._rescue(pyav, name, "corrupt", f"decord 0.6 cannot return frames {out_w} px wide")
            else:
                try:
                    frames = self._run(request, name)
                except BadSample as e:
                    if not self.fallback or e.cause in _NO_RETRY:
                        raise
                    frames = self._rescue(pyav, name, e.cause, e.detail)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(indices):
            raise BadSample("corrupt", name, f"decoder returned frames of shape {frames.shape}")
        return frames

    def _rescue(self, pyav: dict, name: str, cause: str, detail: str) -> np.ndarray:
        """Decode with PyAV what decord failed on; a file PyAV cannot read either is bad with PyAV's cause."""
        try:
            frames = self._run(pyav, name)
        except BadSample as e:
            raise BadSample(e.cause, name, f"decord: {cause} ({detail[:200]}); pyav: {e.cause} ({e.detail[:200]})"
                            ) from None
        self.fallbacks += 1
        self.fallback_causes[cause] = self.fallback_causes.get(cause, 0) + 1
        log.debug("decoded %s with PyAV after decord failed: %s (%s)", name, cause, detail)
        return frames

    def read_views(self, src: str | bytes, name: str, views: Sequence[Sequence[int]], info: dict | None = None,
                   size: Sequence[int] | None = None) -> list[np.ndarray]:
        """One uint8 ``[T_v, h, w, 3]`` array per view, from one decode of the union of the views' frames.

        For multi-view evaluation: each video is opened and decoded once for all its temporal clips and
        spatial crops. ``size`` is shared by all views (``geometry.shared_decode_plan`` gives it and each
        crop's box in the decoded frame).
        """
        if not views or any(len(v) == 0 for v in views):
            raise ValueError("read_views needs at least one view and at least one frame per view")
        union = sorted({int(i) for v in views for i in v})
        frames = self.read(src, name, union, info, size=size)
        where = {i: k for k, i in enumerate(union)}
        return [frames[[where[int(i)] for i in v]] for v in views]

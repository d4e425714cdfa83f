"""Video probing and decoding with PyAV and decord, free of torch and of mmvit imports.

This file is imported normally by :mod:`mmvit.data.readers.video` and also run as a script by
:mod:`mmvit.data.readers.isolate`, where it serves decode requests in a child process that can be killed
when a codec library hangs or crashes. That is why it imports nothing from mmvit and raises its own
:class:`MediaError` (carrying one of the cause names of ``mmvit.data.errors``).

Pitfalls handled here (see shared/REFERENCE.md):
- PyAV: ``thread_type="SLICE"`` with few threads (AUTO/FRAME can hang when decoding stops early);
  containers always closed (they leak otherwise); it may raise only mid-decode on truncated files.
- decord: ``get_batch`` can hang holding the GIL on files whose frame count is over-reported, so the frame
  count it reports is checked against the packets actually present (counted by demuxing with PyAV) before
  any ``get_batch``; threads are kept low.
- decord bundles its own FFmpeg libraries: importing it before ``av`` breaks some PyAV codecs (libvpx) in
  the same process, so ``av`` is always imported first.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class MediaError(Exception):
    """A file that cannot be used; ``cause`` is a cause name from ``mmvit.data.errors.CAUSES``."""

    def __init__(self, cause: str, detail: str = ""):
        super().__init__(f"{cause}: {detail}")
        self.cause, self.detail = cause, detail


def _head(src: str | bytes) -> bytes:
    """First bytes of a file; raises for missing and empty files."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        head = bytes(src[:16])
    else:
        if not os.path.exists(src):
            raise MediaError("missing_file", "no such file")
        with open(src, "rb") as f:
            head = f.read(16)
    if not head:
        raise MediaError("empty_file", "zero bytes")
    return head


def _is_media_head(head: bytes) -> bool:
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    return head.startswith(b"\x1a\x45\xdf\xa3") or head[:4] == b"RIFF"


def _open_error(head: bytes, exc: BaseException) -> MediaError:
    cause = "corrupt" if _is_media_head(head) else "not_media"
    return MediaError(cause, f"{type(exc).__name__}: {exc}"[:200])


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise MediaError("timeout", "decode_timeout_s exceeded")


def _open_av(src: str | bytes, head: bytes):
    import av

    try:
        container = av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    except Exception as e:  # noqa: BLE001  (av.error.* for unreadable headers, OSError, ...)
        raise _open_error(head, e) from None
    if not container.streams.video:
        container.close()
        raise MediaError("no_video_stream", "the container has no video stream")
    return container


def probe_pyav(src: str | bytes, deadline: float | None = None) -> dict[str, Any]:
    """Width, height, exact frame count, fps, presentation timestamps and key frames of the first video stream.

    The frame count is the number of video packets actually present (counted by demuxing, no decoding),
    not the container's claim, so that over-reporting files are caught before any frame is requested.
    """
    head = _head(src)
    container = _open_av(src, head)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or 0
        pts: list[int | None] = []
        keys: list[bool] = []
        try:
            for i, packet in enumerate(container.demux(stream)):
                if i % 64 == 0:
                    _check_deadline(deadline)
                if packet.size == 0:  # the flush packet at the end of the stream
                    continue
                pts.append(packet.pts)
                keys.append(bool(packet.is_keyframe))
        except MediaError:
            raise
        except Exception as e:  # noqa: BLE001  (av.error.*: the container breaks mid-stream)
            raise MediaError("corrupt", f"demuxing failed after {len(pts)} packets: {type(e).__name__}: {e}"[:200])
        claimed = int(stream.frames or 0)
    finally:
        container.close()
    if not pts or width <= 0 or height <= 0:
        raise MediaError("corrupt", f"no decodable video frames (size {width}x{height}, {len(pts)} packets)")
    if any(p is None for p in pts):
        order, keyframes, pts_sorted = None, None, None
    else:
        # Presentation order: packets come in decode order (B-frames reorder), frame i is the i-th smallest pts.
        order = sorted(range(len(pts)), key=lambda i: pts[i])
        pts_sorted = [int(pts[i]) for i in order]
        keyframes = [rank for rank, i in enumerate(order) if keys[i]]
    return {"width": int(width), "height": int(height), "frames": len(pts), "claimed_frames": claimed,
            "fps": float(rate), "pts": pts_sorted, "keyframes": keyframes}


def decode_pyav(src: str | bytes, indices: Sequence[int], *, pts: Sequence[int] | None = None,
                keyframes: Sequence[int] | None = None, threads: int = 1,
                deadline: float | None = None) -> np.ndarray:
    """Frames ``indices`` (presentation order, repeats allowed) as uint8 ``[T, H, W, 3]``.

    With ``pts`` and ``keyframes`` from :func:`probe_pyav`, far-apart indices are reached by seeking to the
    key frame before them instead of decoding everything in between; frames are identified by their
    timestamps, so seeking never shifts the frame identity. Without them, frames are counted from the start.
    """
    head = _head(src)
    wanted = sorted({int(i) for i in indices})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"bad frame indices {list(indices)[:8]}")
    try:
        got = _decode_pyav(src, head, wanted, pts, keyframes, threads, deadline)
    except _NoTimestamps:
        got = _decode_pyav(src, head, wanted, None, None, threads, deadline)
    return np.stack([got[int(i)] for i in indices])


class _NoTimestamps(Exception):
    pass


def _decode_pyav(src, head, wanted, pts, keyframes, threads, deadline) -> dict[int, np.ndarray]:
    container = _open_av(src, head)
    got: dict[int, np.ndarray] = {}
    index_of = {p: i for i, p in enumerate(pts)} if pts else None
    can_seek = index_of is not None and bool(keyframes)

    wanted_set = set(wanted)
    tried: set[int] = set()  # key frames already sought: never seek twice for one (no loop if a seek lands early)

    def seek_target(i: int) -> int | None:
        """The key frame to jump to for frame ``i``, or None when decoding on is cheaper."""
        if not can_seek:
            return None
        key = max((k for k in keyframes if k <= i), default=0)
        return key if key > pos + 1 and key not in tried else None

    pos, w, n_dec = -1, 0, 0  # last decoded index, next wanted position, frames decoded
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = max(1, int(threads))
        while w < len(wanted):
            key = seek_target(wanted[w])
            if key is not None:
                # A key frame lies between here and the target: jump to it instead of decoding the gap.
                tried.add(key)
                container.seek(int(pts[key]), stream=stream, backward=True, any_frame=False)
            ended = True
            try:
                for frame in container.decode(stream):
                    _check_deadline(deadline)
                    n_dec += 1
                    if index_of is None:
                        pos += 1
                    elif frame.pts is None or frame.pts not in index_of:
                        raise _NoTimestamps()
                    else:
                        pos = index_of[frame.pts]
                    if pos in wanted_set and pos not in got:
                        got[pos] = frame.to_ndarray(format="rgb24")
                    while w < len(wanted) and wanted[w] in got:
                        w += 1
                    if w == len(wanted) or seek_target(wanted[w]) is not None:
                        ended = False
                        break
            except (MediaError, _NoTimestamps):
                raise
            except Exception as e:  # noqa: BLE001  (av.error.*: PyAV may raise only mid-decode on broken files)
                raise MediaError("corrupt", f"decoding failed after {n_dec} frames: {type(e).__name__}: {e}"[:200])
            if ended:
                break
    finally:
        container.close()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise MediaError("truncated", f"frames {missing[:4]} requested but the stream ended after frame {pos}")
    return got


def _import_decord():
    import av  # noqa: F401  (load PyAV's FFmpeg first; see the module docstring)
    import decord

    return decord


def decode_decord(src: str | bytes, indices: Sequence[int], *, frames: int | None = None,
                  threads: int = 1) -> np.ndarray:
    """Frames ``indices`` as uint8 ``[T, H, W, 3]`` through ``decord.VideoReader.get_batch``.

    ``frames`` is the packet count from :func:`probe_pyav`. decord's own count is checked against it and
    every index against both before ``get_batch`` is called, because ``get_batch`` can hang forever on an
    index that the file claims but does not hold.
    """
    head = _head(src)
    decord = _import_decord()
    try:
        reader = decord.VideoReader(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src,
                                    num_threads=max(1, int(threads)), ctx=decord.cpu(0))
    except Exception as e:  # noqa: BLE001  (decord raises DECORDError or RuntimeError)
        raise _open_error(head, e) from None
    try:
        n = len(reader)
        limit = n if frames is None else min(n, frames)
        bad = [int(i) for i in indices if not 0 <= int(i) < limit]
        if bad:
            raise MediaError("truncated", f"frames {bad[:4]} requested, decord reports {n} frames and "
                                          f"{frames} packets are present")
        try:
            return reader.get_batch([int(i) for i in indices]).asnumpy()
        except Exception as e:  # noqa: BLE001  (DECORDError and friends)
            raise MediaError("corrupt", f"decord get_batch: {type(e).__name__}: {e}"[:200]) from None
    finally:
        del reader


def run_request(request: dict) -> Any:
    """Execute one request ``{"op": "probe"|"pyav"|"decord", "src": ..., **kwargs}`` (both in and out of
    process). A relative ``timeout_s`` becomes an absolute deadline here."""
    request = dict(request)
    op, src = request.pop("op"), request.pop("src")
    timeout = request.pop("timeout_s", None)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    if op == "probe":
        return probe_pyav(src, deadline=deadline)
    if op == "pyav":
        return decode_pyav(src, request.pop("indices"), deadline=deadline, **request)
    if op == "decord":
        return decode_decord(src, request.pop("indices"), **request)
    raise ValueError(f"unknown decode op {op!r}")


# --- child-process server (see isolate.py) -----------------------------------------------------------------

def _read_msg(f) -> Any:
    header = f.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    return pickle.loads(f.read(size))


def _write_msg(f, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def serve() -> None:
    """Answer requests from stdin on a private copy of stdout until stdin closes.

    Codec libraries may print to fd 1; it is pointed at stderr so that nothing corrupts the protocol.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    # Load the libraries before saying ready, so that start-up never counts against a sample's time limit.
    import av  # noqa: F401

    try:
        _import_decord()
    except ImportError:
        pass
    _write_msg(out, ("ready",))
    while True:
        request = _read_msg(inp)
        if request is None:
            return
        try:
            reply = ("ok", run_request(request))
        except MediaError as e:
            reply = ("err", e.cause, e.detail)
        except Exception as e:  # noqa: BLE001  (the server must answer every request)
            reply = ("err", "other", f"{type(e).__name__}: {e}"[:200])
        _write_msg(out, reply)


if __name__ == "__main__":
    serve()

"""Video probing and decoding with PyAV and decord, free of torch and of mmvit imports.

This file is imported normally by :mod:`mmvit.data.readers.video` and also run as a script by
:mod:`mmvit.data.readers.isolate`, where it serves decode requests in a child process that can be killed
when a codec library hangs or crashes. That is why it imports nothing from mmvit and raises its own
:class:`MediaError` (carrying one of the cause names of ``mmvit.data.errors``).

Decoding does only what a clip needs (the accelerator-starving decoders of VideoMAE issue 81 and
mmaction2 issues 264 and 1697 convert and resize every frame at full size): PyAV seeks to the key frame
before each far-away wanted frame, decodes forward, and converts to RGB only the wanted frames, scaling
them during the conversion (``VideoReformatter.reformat(width=, height=, format="rgb24")``; even sizes of
4:2:0 video are scaled in YUV just before, see ``_ToRGB``) with reformatters reused for the whole clip (a
fresh one per frame costs a new swscale context each time); decord gets the sorted unique indices (it decodes forward and skips the conversion of frames it passes,
but seeks back for an index lower than the last) and scales in its filter graph
(``VideoReader(width=, height=)``). Both scalers are swscale's ``BILINEAR``, which widens its filter
with the downscale factor and so antialiases (tests compare it with torch's antialiased bilinear).
Decoders only downscale: a requested size larger than the frame gives the native size on that axis.

Pitfalls handled here (as reported by users on the PyAV and decord issue trackers):
- PyAV: ``thread_type="SLICE"`` with few threads (AUTO/FRAME can hang when decoding stops early);
  containers always closed (they leak otherwise); it may raise only mid-decode on truncated files.
- decord: ``get_batch`` can hang on files whose frame count is over-reported, so the frame count it
  reports is checked against the packets actually present (counted by demuxing with PyAV) before any
  ``get_batch``; threads are kept low. decord 0.6 cannot return frames of some widths (see
  :func:`decord_refuses_width`).
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
    return head.startswith((b"\x1a\x45\xdf\xa3", b"GIF8")) or head[:4] == b"RIFF"


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


def output_size(size: Sequence[int] | None, native: Sequence[int]) -> tuple[int, int]:
    """The ``(h, w)`` a decoder returns for a requested full-frame ``size``: each side is the requested one
    or the native one, whichever is smaller (decoders only downscale); ``None`` is the native size."""
    nh, nw = int(native[0]), int(native[1])
    if size is None:
        return nh, nw
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"decode size must be positive, got {tuple(size)}")
    return min(h, nh), min(w, nw)


def probe_pyav(src: str | bytes, deadline: float | None = None) -> dict[str, Any]:
    """Width, height, exact frame count, fps, presentation timestamps and key frames of the first video stream.

    The frame count is the number of video packets actually present (counted by demuxing, no decoding),
    not the container's claim, so that over-reporting files are caught before any frame is requested.
    Animated GIFs probe like any video (one packet per frame, timestamps in 1/100 s).
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


# --- PyAV ----------------------------------------------------------------------------------------------------

def decode_pyav(src: str | bytes, indices: Sequence[int], *, pts: Sequence[int] | None = None,
                keyframes: Sequence[int] | None = None, threads: int = 1, deadline: float | None = None,
                size: Sequence[int] | None = None, stats: dict | None = None) -> np.ndarray:
    """Frames ``indices`` (presentation order, repeats allowed) as uint8 ``[T, h, w, 3]``.

    ``(h, w)`` is :func:`output_size` of ``size`` and the stream's frame size. With ``pts`` and
    ``keyframes`` from :func:`probe_pyav`, far-apart indices are reached by seeking to the key frame before
    them instead of decoding everything in between; frames are identified by their timestamps, so seeking
    never shifts the frame identity. Without them, frames are counted from the start. ``stats``, when
    given, receives ``decoded`` (frames out of the decoder), ``converted`` (frames turned into RGB),
    ``seeks`` and ``redecoded`` (frames decoded a second time because a seek landed early).
    """
    head = _head(src)
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"bad frame indices {indices[:8]}")
    counts = stats if stats is not None else {}
    try:
        return _decode_pyav(src, head, indices, pts, keyframes, threads, deadline, size, counts)
    except _NoTimestamps:
        return _decode_pyav(src, head, indices, None, None, threads, deadline, size, counts)


class _NoTimestamps(Exception):
    pass


# Source formats scaled in their own planes before the RGB conversion (see _ToRGB).
_PLANAR_420 = ("yuv420p", "yuvj420p")


class _ToRGB:
    """RGB conversion (and scaling) of decoded frames to one output size, with reusable swscale contexts.

    Scaling 8-bit 4:2:0 frames to an even size is done in two swscale calls, the planes scaled in their own
    format and then converted by swscale's unscaled YUV to RGB path (the one native-size frames take):
    measured 2.5x (720p) to 5x (340x256) faster than one call that scales into packed RGB, whose output
    stage has no SIMD path. Odd sizes and other formats take the single call (chroma planes of odd-sized
    4:2:0 frames come out misaligned by the second step).
    """

    def __init__(self, h: int, w: int, threads: int):
        from av.video.reformatter import VideoReformatter

        self.h, self.w = h, w
        self.scale, self.rgb = VideoReformatter(), VideoReformatter()
        self.options: dict[str, Any] = {"threads": max(1, int(threads))}

    def _reformat(self, reformatter, frame, **kw):
        try:
            return reformatter.reformat(frame, **kw, **self.options)
        except TypeError:  # a PyAV without reformat(threads=): let swscale choose
            self.options = {}
            return reformatter.reformat(frame, **kw)

    def __call__(self, frame) -> np.ndarray:
        """uint8 ``[h, w, 3]``, possibly a view of the converted frame's buffer (copy before keeping it)."""
        if (frame.height, frame.width) != (self.h, self.w):
            if frame.format.name in _PLANAR_420 and self.h % 2 == 0 and self.w % 2 == 0:
                frame = self._reformat(self.scale, frame, width=self.w, height=self.h, interpolation="BILINEAR")
            else:
                return self._reformat(self.rgb, frame, width=self.w, height=self.h, format="rgb24",
                                      interpolation="BILINEAR").to_ndarray()
        return self._reformat(self.rgb, frame, format="rgb24", interpolation="BILINEAR").to_ndarray()


def _decode_pyav(src, head, indices, pts, keyframes, threads, deadline, size, stats) -> np.ndarray:
    container = _open_av(src, head)
    slots: dict[int, list[int]] = {}  # frame index -> positions in the output
    for k, i in enumerate(indices):
        slots.setdefault(i, []).append(k)
    wanted = sorted(slots)
    index_of = {p: i for i, p in enumerate(pts)} if pts else None
    can_seek = index_of is not None and bool(keyframes)
    tried: set[int] = set()  # key frames already sought: never seek twice for one (no loop if a seek lands early)
    got: set[int] = set()

    def seek_target(i: int) -> int | None:
        """The key frame to jump to for frame ``i``, or None when decoding on is cheaper."""
        if not can_seek:
            return None
        key = max((k for k in keyframes if k <= i), default=0)
        return key if key > pos + 1 and key not in tried else None

    pos, top, w = -1, -1, 0  # last decoded index, highest decoded index, next wanted position
    n_dec = n_conv = n_seek = n_again = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = max(1, int(threads))
        ctx = stream.codec_context
        out_h, out_w = output_size(size, (ctx.height, ctx.width))
        out = np.empty((len(indices), out_h, out_w, 3), np.uint8)
        to_rgb = _ToRGB(out_h, out_w, threads)
        while w < len(wanted):
            key = seek_target(wanted[w])
            if key is not None:
                # A key frame lies between here and the target: jump to it instead of decoding the gap.
                tried.add(key)
                n_seek += 1
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
                    if pos <= top:
                        n_again += 1
                    top = max(top, pos)
                    if pos in slots and pos not in got:
                        rgb = to_rgb(frame)
                        n_conv += 1
                        for k in slots[pos]:
                            out[k] = rgb
                        got.add(pos)
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
        stats.update(decoded=stats.get("decoded", 0) + n_dec, converted=stats.get("converted", 0) + n_conv,
                     seeks=stats.get("seeks", 0) + n_seek, redecoded=stats.get("redecoded", 0) + n_again)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise MediaError("truncated", f"frames {missing[:4]} requested but the stream ended after frame {pos}")
    return out


# --- decord --------------------------------------------------------------------------------------------------

def _import_decord():
    import av  # noqa: F401  (load PyAV's FFmpeg first; see the module docstring)
    import decord

    return decord


def decord_refuses_width(width: int) -> bool:
    """Whether decord 0.6 fails to return RGB frames ``width`` pixels wide.

    Its FFmpeg 4.1 pads each RGB row to a multiple of 32 bytes (widening the row in powers of two until it
    fits); decord copies a padded frame row by row, except when the padded row length is a multiple of the
    width, which it takes for a compact frame of more channels and then refuses with "DECORDArrayCopyFromTo:
    The size must exactly match". That happens for widths 2, 3, 4, 6, 8, 12, 16, 24, 48 and 72 (checked
    against decord itself for every width up to 200 in tests/test_data_readers.py).
    """
    align = 1
    while True:
        padded = -(-width // align) * align
        if (3 * padded) % 32 == 0:
            break
        align *= 2
    row = 3 * padded
    return row != 3 * width and row % width == 0


def _native_size(src: str | bytes, head: bytes) -> tuple[int, int]:
    container = _open_av(src, head)
    try:
        ctx = container.streams.video[0].codec_context
        return int(ctx.height), int(ctx.width)
    finally:
        container.close()


def decode_decord(src: str | bytes, indices: Sequence[int], *, frames: int | None = None, threads: int = 1,
                  size: Sequence[int] | None = None, native: Sequence[int] | None = None) -> np.ndarray:
    """Frames ``indices`` as uint8 ``[T, h, w, 3]`` through ``decord.VideoReader.get_batch``.

    ``frames`` is the packet count from :func:`probe_pyav`. decord's own count is checked against it and
    every index against both before ``get_batch`` is called, because ``get_batch`` can hang forever on an
    index that the file claims but does not hold. ``size`` is scaled in decord's filter graph (see
    :func:`output_size`); ``native`` is the probed ``(height, width)`` (read from the stream when omitted).
    A frame size other than the expected one (decord applies rotation metadata, PyAV does not) is an error.
    """
    head = _head(src)
    decord = _import_decord()
    kw: dict[str, int] = {}
    expect = None
    if size is not None or native is not None:
        native = tuple(native) if native is not None else _native_size(src, head)
        expect = output_size(size, native)
        if expect != tuple(native):
            kw = {"height": expect[0], "width": expect[1]}
    try:
        reader = decord.VideoReader(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src,
                                    num_threads=max(1, int(threads)), ctx=decord.cpu(0), **kw)
    except Exception as e:  # noqa: BLE001  (decord raises DECORDError or RuntimeError)
        raise _open_error(head, e) from None
    try:
        n = len(reader)
        limit = n if frames is None else min(n, frames)
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < limit]
        if bad:
            raise MediaError("truncated", f"frames {bad[:4]} requested, decord reports {n} frames and "
                                          f"{frames} packets are present")
        # Sorted and unique: decord seeks back to a key frame for any index below the previous one.
        unique = sorted(set(indices))
        try:
            batch = reader.get_batch(unique).asnumpy()
        except Exception as e:  # noqa: BLE001  (DECORDError and friends)
            raise MediaError("corrupt", f"decord get_batch: {type(e).__name__}: {e}"[:200]) from None
    finally:
        del reader
    if expect is not None and tuple(batch.shape[1:3]) != expect:
        raise MediaError("corrupt", f"decord returned {batch.shape[1]}x{batch.shape[2]} frames, expected "
                                    f"{expect[0]}x{expect[1]} (rotation metadata?)")
    if unique == indices:
        return batch
    where = {i: k for k, i in enumerate(unique)}
    return batch[[where[i] for i in indices]]


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

"""Video decoding against the decoder's own limit (``tools/benchmark.py decode``; docs/benchmarks.md).

Two generated H.264 files (PyAV's libx264, as ``mmvit.testing.media.write_video`` encodes): Kinetics'
shape (340x256, 10 s at 30 fps, a key frame every 2 s) and 1280x720 with a single key frame. Each frame
carries its index (``mmvit.testing.media.frame_pattern`` in the top half) over a moving texture (so that
decoding costs what real footage costs), so every variant's frames are checked to be the requested ones.

Per file, for an 8-frame TSN sample (``sample_frames(..., sampling="uniform")``) and a 16-frame clip
(``sampling="clip"``), in one process, interleaved:

- ``limit``: the decoder's own limit: PyAV decoding every frame the sample needs (from the key frame
  before each run of wanted frames to the last wanted one) with no RGB conversion at all, written here
  independently of the readers;
- ``VideoDecoder.read`` with PyAV and with decord, in process, at native size and scaled in the decoder to
  a 224-pixel short side (the size ``geometry.decode_plan`` gives for the full frame);
- for reference: PyAV at native size then torch's antialiased bilinear resize (what the loader did before
  in-decoder scaling), PyAV converting each wanted frame with ``frame.to_ndarray(format="rgb24")`` (a new
  swscale context per frame, as the reader did before), and decord scaled in its child process
  (``decode_isolation: process``, the loader's default for decord: the frames come back through a pipe);
- torchcodec's ``VideoDecoder.get_frames_at`` (native, and with its ``Resize`` decoder transform) when
  torchcodec imports (it is not a project dependency; see docs/benchmarks.md for why).

Probing (PyAV demuxing every packet, once per file in the loader) is timed on its own and not included.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from mmvit.bench.common import Bar, Column, Report, Table, interleaved, median, ratio, simd_flags

TARGET_SIDE = 224  # short side of the scaled variants
BAR = 1.3          # issue bar: every reader within 1.3x of the limit
# (name, height, width, seconds, fps, key frame interval in frames; None: the first frame only)
VIDEOS = [("Kinetics-like 340x256, key frame every 2 s", 256, 340, 10.0, 30, 60),
          ("1280x720, one key frame", 720, 1280, 10.0, 30, None)]
TINY_VIDEOS = [("tiny 96x64, key frame every 0.5 s", 64, 96, 2.0, 30, 15),
               ("tiny 128x72, one key frame", 72, 128, 2.0, 30, None)]


def write_clip(path: str, h: int, w: int, frames: int, fps: int, gop: int | None) -> str:
    """A frame-coded H.264 mp4 (yuv420p, x264 ``veryfast``, crf 23, B-frames) with key frames exactly every
    ``gop`` frames (no scene-cut key frames), or only the first when ``gop`` is None."""
    import av

    from mmvit.testing import media as synth

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    keyint = "infinite" if gop is None else str(gop)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"preset": "veryfast", "crf": "23",
                          "x264-params": f"keyint={keyint}:min-keyint={keyint if gop else 1}:scenecut=0"}
        for t in range(frames):
            phase = 2 * np.pi * t / fps
            tex = np.stack([np.sin(xx / 17 + phase), np.cos(yy / 23 - phase), np.sin((xx + yy) / 31 + 2 * phase)], -1)
            img = ((tex + 1) * 127.5).astype(np.uint8)
            code = synth.frame_pattern(t, h, w)
            img[: h // 2] = code[: h // 2]  # the frame index, readable by synth.frame_index
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_limit(path: str, indices: Sequence[int], pts: Sequence[int], keyframes: Sequence[int],
                 threads: int = 1, convert: Callable | None = None) -> int:
    """Decode (no RGB conversion) every frame that ``indices`` need; returns the number of frames decoded.

    Runs of wanted frames start at the key frame before their first frame, unless decoding on from the
    previous run reaches it without skipping a frame; each run is decoded up to its last wanted frame.
    ``convert``, if given, is called on each wanted frame (for the reference variant of the old reader).
    """
    import av

    wanted = sorted({int(i) for i in indices})
    want_pts = {int(pts[i]) for i in wanted}
    runs: list[list[int]] = []
    for i in wanted:
        key = max((k for k in keyframes if k <= i), default=0)
        if runs and key <= runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([key, i])
    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", threads
        for key, last in runs:
            if key > 0:  # a run from the first frame needs no seek
                container.seek(int(pts[key]), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                n += 1
                if convert is not None and frame.pts in want_pts:
                    convert(frame)
                if frame.pts is not None and frame.pts >= pts[last]:
                    break
    return n


def scaled_size(h: int, w: int, side: int = TARGET_SIDE) -> tuple[int, int]:
    """The decode size for the whole frame resized to a ``side``-pixel short side."""
    from mmvit.data.readers.geometry import decode_plan

    s = side / min(h, w)
    return decode_plan((h, w), (0, 0, h, w), (round(h * s), round(w * s)))[0]


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def _variants(path: str, info: dict, idx: list[int], size: tuple[int, int], children: list) -> dict[str, tuple[Callable[[], object], tuple[int, int] | None]]:
    """name -> (call returning the frames or a frame count, output size or None)."""
    import torch
    import torch.nn.functional as F

    from mmvit.data.readers.video import VideoDecoder

    native = (info["height"], info["width"])
    pyav = VideoDecoder("pyav", isolation="none")
    out: dict[str, tuple[Callable[[], object], tuple[int, int] | None]] = {
        "limit": (lambda: decode_limit(path, idx, info["pts"], info["keyframes"]), None),
        "pyav": (lambda: pyav.read(path, path, idx, info), native),
        "pyav scaled": (lambda: pyav.read(path, path, idx, info, size=size), size),
    }

    def resized() -> torch.Tensor:
        x = torch.from_numpy(pyav.read(path, path, idx, info)).permute(0, 3, 1, 2).float()
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    out["pyav native + torch resize"] = (resized, size)
    # The reader before in-decoder scaling: frame.to_ndarray(format="rgb24") makes a new swscale context
    # for every frame (frames kept in a list and stacked, as it did).
    def per_frame_context() -> np.ndarray:
        got: list[np.ndarray] = []
        decode_limit(path, idx, info["pts"], info["keyframes"], convert=lambda f: got.append(f.to_ndarray(
            format="rgb24")))
        by_pts = dict(zip(sorted({int(info["pts"][i]) for i in idx}), got))
        return np.stack([by_pts[int(info["pts"][i])] for i in idx])

    out["pyav native, new swscale context per frame"] = (per_frame_context, native)
    if importlib.util.find_spec("decord") is not None:
        decord = VideoDecoder("decord", isolation="none")
        child = VideoDecoder("decord", isolation="process", timeout_s=60.0)
        children.append(child)
        out["decord"] = (lambda: decord.read(path, path, idx, info), native)
        out["decord scaled"] = (lambda: decord.read(path, path, idx, info, size=size), size)
        out["decord scaled, child process"] = (lambda: child.read(path, path, idx, info, size=size), size)
    try:
        from torchcodec.decoders import VideoDecoder as TCDecoder
        from torchcodec.transforms import Resize
    except Exception:  # noqa: BLE001  (not installed, or installed without its FFmpeg libraries)
        return out
    unique = sorted(set(idx))

    def torchcodec(transforms=None) -> np.ndarray:
        d = TCDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC", seek_mode="exact", transforms=transforms)
        return d.get_frames_at(indices=unique).data.numpy()

    out["torchcodec"] = (torchcodec, native)
    out["torchcodec scaled"] = (lambda: torchcodec([Resize(size)]), size)
    return out


def _frames_ok(result: object, idx: list[int], size: tuple[int, int] | None, native: tuple[int, int]) -> bool | None:
    """Whether the frames returned are the requested ones (their coded indices) at the expected size."""
    from mmvit.testing import media as synth

    if size is None:
        return None
    a = result.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy() if hasattr(result, "permute") else result
    want = idx if len(a) == len(idx) else sorted(set(idx))  # torchcodec gets the unique indices
    if tuple(a.shape[1:3]) != tuple(size):
        return False
    # Back to the native grid (nearest pixel), where synth.frame_index expects its blocks.
    ys = (np.arange(native[0]) * size[0] // native[0]).astype(np.int64)
    xs = (np.arange(native[1]) * size[1] // native[1]).astype(np.int64)
    return [synth.frame_index(f[ys][:, xs]) for f in a] == [i % (1 << synth.BITS) for i in want]


def run(tiny: bool = False, repeats: int = 5, seed: int = 0, data_dir: str | None = None) -> Report:
    t_start = time.perf_counter()
    report = Report("decode")
    if importlib.util.find_spec("av") is None:
        report.skipped = "PyAV is not installed (pip install av)"
        return report
    from mmvit.data.frames import sample_frames
    from mmvit.data.readers import backends

    report.params.update(target_short_side=TARGET_SIDE, decoder_threads=1, simd=simd_flags(),
                         load_average_start=_load())
    table = Table("ms per sample; ratio = median over rounds of variant / limit (same round)", [
        Column("video", "video"), Column("job", "sample"), Column("variant", "variant"), Column("size", "frames"),
        Column("ms", "median ms", "{:.1f}"), Column("ratio", "vs limit", "{:.2f}x"),
        Column("decoded", "frames decoded"), Column("ok", "right frames")])
    worst: dict[str, float] = {}
    children: list = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, h, w, seconds, fps, gop in (TINY_VIDEOS if tiny else VIDEOS):
                path = os.path.join(tmp, f"{h}x{w}.mp4")
                write_clip(path, h, w, int(seconds * fps), fps, gop)
                t0 = time.perf_counter()
                info = backends.probe_pyav(path)
                probe_ms = 1e3 * (time.perf_counter() - t0)
                n = info["frames"]
                size = scaled_size(h, w, TARGET_SIDE if not tiny else 36)  # decord takes 54 and 64 px widths
                table.rows.append({"video": name, "job": "probe (once per file)", "variant": "PyAV demux",
                                   "ms": probe_ms, "size": f"{n} frames, key frames {info['keyframes'][:6]}"})
                jobs = {"TSN 8 (uniform)": sample_frames(n, 8, sampling="uniform")[0],
                        "clip 16 (consecutive)": sample_frames(n, 16, sampling="clip")[0]}
                for job, idx in jobs.items():
                    variants = _variants(path, info, idx, size, children)
                    calls = {k: v[0] for k, v in variants.items()}
                    # Cheap samples get more rounds: their ratios would otherwise carry the load of one round.
                    rounds = repeats if tiny or h * w > 500_000 else 3 * repeats
                    times = interleaved(calls, warmup=1, repeats=rounds, budget_s=None if tiny else 40.0)
                    limit_frames = calls["limit"]()
                    stats: dict = {}
                    backends.decode_pyav(path, idx, pts=info["pts"], keyframes=info["keyframes"], stats=stats)
                    report.raw[f"{name} / {job}"] = {**times, "limit_frames": limit_frames, "pyav_stats": stats}
                    for k, (fn, out_size) in variants.items():
                        r = ratio(times, k, "limit")
                        row = {"video": name, "job": job, "variant": k, "ms": 1e3 * median(times[k]), "ratio": r,
                               "size": f"{out_size[0]}x{out_size[1]}" if out_size else "no RGB",
                               "ok": _frames_ok(fn(), idx, out_size, (h, w))}
                        if k == "limit":
                            row["decoded"] = limit_frames
                        elif k.startswith("pyav"):
                            row["decoded"] = stats["decoded"]
                        table.rows.append(row)
                        if k in ("pyav", "pyav scaled", "decord", "decord scaled"):
                            backend = k.split()[0]
                            worst[backend] = max(worst.get(backend, 0.0), r)
        finally:
            for child in children:
                child.close()
    report.tables.append(table)
    for backend in ("pyav", "decord"):
        report.bars.append(Bar(f"{backend} read vs the decoder's limit (worst of native/scaled, both files, both "
                               f"samples)", worst.get(backend), "<=", BAR, judged=not tiny))
    if "decord" not in worst:
        report.notes.append("decord is not installed: PyAV only.")
    if not any(r["variant"].startswith("torchcodec") for r in table.rows):
        report.notes.append("torchcodec is not installed (not a project dependency: see docs/benchmarks.md).")
    report.notes.append(f"1 decoder thread per call; SIMD flags: {report.params['simd']}; load average "
                        f"{report.params['load_average_start']} at the start, {_load()} at the end.")
    report.seconds = time.perf_counter() - t_start
    return report


def finite_positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0

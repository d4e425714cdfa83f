"""Decoding only what a clip needs: in-decoder scaling, frame counts, multi-view reads, GIFs, the PyAV fallback.

References: PyAV's own sequential decode of every frame (frame identity and pixels), torch's antialiased
bilinear resize (scaling quality), decord itself (the widths it refuses), brute-force frame counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmvit.data import BadSample, read_video
from mmvit.data.readers import backends
from mmvit.data.readers.video import VideoDecoder
from mmvit.testing import media as synth

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    return {"mp4": synth.write_video(str(d / "a.mp4"), frames=60, h=64, w=96, gop=12),  # B-frames, 5 key frames
            "one_key": synth.write_video(str(d / "k.mp4"), frames=30, h=48, w=80, gop=1000),
            "webm": synth.write_video(str(d / "a.webm"), frames=24, h=48, w=80, codec="libvpx-vp9", gop=8),
            "dir": d}


def reference_frames(path: str, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Every frame, decoded sequentially by PyAV from the start, converted one by one with a fresh
    reformatter per frame and swscale's default bilinear (even sizes of 4:2:0 frames scaled in YUV first,
    as the readers do)."""
    out = []
    with av.open(path) as c:
        for frame in c.decode(video=0):
            if size is not None and size[0] % 2 == 0 and size[1] % 2 == 0:
                frame = frame.reformat(width=size[1], height=size[0])
            kw = {} if size is None else {"width": size[1], "height": size[0]}
            out.append(frame.reformat(format="rgb24", **kw).to_ndarray().copy())
    return out


def min_decoded(wanted: list[int], keyframes: list[int]) -> int:
    """Brute force: frames a decoder must output for ``wanted``, jumping to a key frame only when it skips
    frames (a key frame after the last decoded frame + 1), else decoding on."""
    pos, n = -1, 0
    for i in sorted(set(wanted)):
        key = max(k for k in keyframes if k <= i)
        start = max(pos + 1, key)
        n += i - start + 1
        pos = i
    return n


@pytest.mark.parametrize("size", [None, (32, 48), (40, 30), (33, 47)])
def test_pyav_frames_equal_a_full_sequential_decode(files, size):
    path = files["mp4"]
    info = backends.probe_pyav(path)
    ref = reference_frames(path, size)
    idx = [41, 3, 3, 17, 59, 18, 0]
    stats: dict = {}
    got = backends.decode_pyav(path, idx, pts=info["pts"], keyframes=info["keyframes"], size=size, stats=stats)
    assert got.shape == (len(idx), *(size or (64, 96)), 3)
    for k, i in enumerate(idx):
        assert np.array_equal(got[k], ref[i]), (k, i)
    # Each wanted frame converted once, no frame decoded twice, no more frames decoded than needed.
    assert stats["converted"] == len(set(idx)) and stats["redecoded"] == 0
    assert stats["decoded"] == min_decoded(idx, info["keyframes"])


def test_frames_needed_up_to_the_last_wanted_one_without_key_frames(files):
    path = files["one_key"]
    info = backends.probe_pyav(path)
    assert info["keyframes"] == [0]
    stats: dict = {}
    got = backends.decode_pyav(path, [20, 5], pts=info["pts"], keyframes=info["keyframes"], stats=stats)
    assert [synth.frame_index(f) for f in got] == [20, 5]
    assert stats["decoded"] == 21 and stats["seeks"] == 0


def test_a_requested_size_is_capped_at_the_frame_per_axis(files):
    frames = read_video(files["mp4"], [4, 9], "pyav", size=(200, 50))
    assert frames.shape == (2, 64, 50, 3)  # height kept (no upscaling), width scaled
    assert read_video(files["mp4"], [4], "pyav", size=(64, 96)).shape == (1, 64, 96, 3)
    with pytest.raises(ValueError, match="positive"):
        backends.output_size((0, 10), (64, 96))


def _zone_plate(h: int, w: int, frames: int) -> np.ndarray:
    """Concentric rings up to the frame's Nyquist rate: downscaling without antialiasing aliases visibly."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = 127.5 + 127.5 * np.cos(((xx - w / 2) ** 2 + (yy - h / 2) ** 2) * np.pi / max(h, w))
    return np.repeat(np.repeat(g.astype(np.uint8)[None, :, :, None], 3, 3), frames, 0)


def _write_lossless(path: str, frames: np.ndarray) -> str:
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        s.options = {"qp": "0", "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_in_decoder_scaling_antialiases_like_torch(files, backend):
    """Mean absolute difference to torch's antialiased bilinear resize of the native frame: at most 2.5 grey
    levels (of 255) at 1.6x and 4x downscales, while the same resize without antialiasing differs from it by
    more than 3x as much, so the test would catch an aliasing scaler."""
    if backend == "decord":
        pytest.importorskip("decord")
    path = _write_lossless(str(files["dir"] / "zone.mp4"), _zone_plate(192, 256, 3))
    native = read_video(path, [1], backend)[0].permute(2, 0, 1)[None].float()
    for size in ((120, 160), (48, 64)):
        scaled = read_video(path, [1], backend, size=size)[0].float()
        ref = F.interpolate(native, size=size, mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
        plain = F.interpolate(native, size=size, mode="bilinear", antialias=False, align_corners=False)[0].permute(1, 2, 0)
        err, aliased = (scaled - ref).abs().mean().item(), (plain - ref).abs().mean().item()
        assert err <= 2.5 and aliased > 3 * 2.5, (size, err, aliased)


def test_decord_scales_to_the_same_frames_as_pyav(files):
    pytest.importorskip("decord")
    idx = [30, 2, 2, 45, 11]
    a = read_video(files["mp4"], idx, "pyav", size=(40, 60))
    b = read_video(files["mp4"], idx, "decord", size=(40, 60))
    assert a.shape == b.shape == (5, 40, 60, 3)
    # Identity from the coded blocks (on the native grid), pixels within codec/scaler tolerance.
    ys, xs = np.arange(64) * 40 // 64, np.arange(96) * 60 // 96
    for x in (a, b):
        assert [synth.frame_index(f[ys][:, xs]) for f in x.numpy()] == idx
    assert (a.float() - b.float()).abs().mean() < 3.0


def test_read_views_decodes_the_union_once(files, monkeypatch):
    path = files["mp4"]
    views = [[5, 6, 7, 8], [30, 31, 32, 33], [6, 31, 58, 58]]
    decoder = VideoDecoder("pyav", isolation="none")
    info = decoder.probe(path, path)
    separate = [decoder.read(path, path, v, info, size=(32, 48)) for v in views]
    requests = []
    run = backends.run_request
    monkeypatch.setattr(backends, "run_request", lambda r: requests.append(r) or run(r))
    together = decoder.read_views(path, path, views, info, size=(32, 48))
    assert len(requests) == 1 and sorted(requests[0]["indices"]) == sorted({i for v in views for i in v})
    assert all(np.array_equal(a, b) for a, b in zip(together, separate))
    with pytest.raises(ValueError):
        decoder.read_views(path, path, [[1], []], info)


def write_gif(path: str, frames: int = 10, h: int = 40, w: int = 96) -> list[int]:
    """An animated GIF written by Pillow with uneven frame durations; returns them in ms."""
    from PIL import Image

    durations = [100, 50, 200] * (frames // 3) + [100] * (frames % 3)
    images = [Image.fromarray(synth.frame_pattern(i, h, w)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return durations


def test_animated_gifs_are_videos_through_pyav(files):
    path = str(files["dir"] / "anim.gif")
    durations = write_gif(path)
    info = backends.probe_pyav(path)
    assert info["frames"] == 10 and (info["height"], info["width"]) == (40, 96)
    # Timestamps in 1/100 s: the running sum of the frame durations.
    assert info["pts"] == [sum(durations[:i]) // 10 for i in range(10)]
    frames = read_video(path, [7, 0, 3], "pyav")
    assert [synth.frame_index(f) for f in frames.numpy()] == [7, 0, 3]


def test_auto_falls_back_to_pyav_where_decord_fails_and_explicit_backends_do_not(files):
    pytest.importorskip("decord")
    path = str(files["dir"] / "fallback.gif")
    write_gif(path)
    decoder = VideoDecoder("auto", isolation="none")
    assert decoder.backend == "decord"
    frames = decoder.read(path, path, [2, 9])
    assert [synth.frame_index(f) for f in frames] == [2, 9]
    assert decoder.fallbacks == 1 and sum(decoder.fallback_causes.values()) == 1
    with pytest.raises(BadSample) as e:
        read_video(path, [2, 9], "decord")  # decord alone refuses GIFs ("broken metadata")
    assert e.value.cause in ("not_media", "corrupt")
    # A width decord is known to refuse goes to PyAV without trying decord; an explicit decord still tries.
    scaled = decoder.read(files["mp4"], files["mp4"], [1], size=(32, 48))
    assert scaled.shape == (1, 32, 48, 3) and decoder.fallbacks == 2
    with pytest.raises(BadSample):
        read_video(files["mp4"], [1], "decord", size=(32, 48))


def test_a_file_both_backends_fail_on_names_both_reasons(files):
    pytest.importorskip("decord")
    decoder = VideoDecoder("auto", isolation="none")
    info = dict(backends.probe_pyav(files["mp4"]), frames=1000)  # a sidecar that over-reports the frames
    with pytest.raises(BadSample) as e:
        decoder.read(files["mp4"], "a.mp4", [0, 500], info)
    assert e.value.cause == "truncated"
    assert "decord: truncated" in e.value.detail and "pyav: truncated" in e.value.detail
    with pytest.raises(BadSample) as e:  # a missing file is not retried
        decoder.read(str(files["dir"] / "missing.mp4"), "missing.mp4", [0], info)
    assert e.value.cause == "missing_file" and "pyav" not in e.value.detail


def test_decord_refuses_exactly_the_predicted_widths(files):
    decord = pytest.importorskip("decord")
    path = files["webm"]
    refused = []
    for w in range(2, 201):
        try:
            vr = decord.VideoReader(path, num_threads=1, width=w, height=16)
            ok = vr.get_batch([1]).asnumpy().shape == (1, 16, w, 3)
            del vr
        except Exception:  # noqa: BLE001  (DECORDError)
            ok = False
        if not ok:
            refused.append(w)
    assert refused == [w for w in range(2, 201) if backends.decord_refuses_width(w)]
    assert 48 in refused and 72 in refused


def test_bytes_and_paths_scale_alike(files):
    with open(files["webm"], "rb") as f:
        data = f.read()
    for backend in ("pyav", "decord"):
        if backend == "decord":
            pytest.importorskip("decord")
        a = read_video(data, [3, 20], backend, size=(24, 40))
        assert torch.equal(a, read_video(files["webm"], [3, 20], backend, size=(24, 40)))

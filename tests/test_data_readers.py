"""Readers: decord and PyAV return the same frames, images of every mode become RGB, bad files get a cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvit.data import BadSample, read_image, read_video
from mmvit.data.readers import backends
from mmvit.data.readers.video import VideoDecoder
from mmvit.testing import media as synth

pytest.importorskip("av")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    out = {
        "mp4": synth.write_video(str(d / "a.mp4"), frames=40, h=64, w=96, gop=8),  # B-frames, 5 key frames
        "webm": synth.write_video(str(d / "a.webm"), frames=24, h=48, w=80, codec="libvpx-vp9"),
        "avi": synth.write_video(str(d / "a.avi"), frames=24, h=48, w=80, codec="mpeg4"),
        "long": synth.write_video(str(d / "long.mp4"), frames=240, h=96, w=128, gop=12),
        "dir": d,
    }
    return out


INDICES = [0, 3, 3, 17, 23, 1, 9]


@pytest.mark.parametrize("fmt", ["mp4", "webm", "avi"])
def test_decord_and_pyav_return_the_same_frames(media, fmt):
    pytest.importorskip("decord")
    a = read_video(media[fmt], INDICES, "pyav")
    b = read_video(media[fmt], INDICES, "decord")
    assert a.dtype == torch.uint8 and a.shape == (len(INDICES), *a.shape[1:3], 3)
    assert a.shape == b.shape
    # Same frames: the coded index matches the request, and pixels agree within codec tolerance.
    assert [synth.frame_index(f) for f in a.numpy()] == INDICES
    assert [synth.frame_index(f) for f in b.numpy()] == INDICES
    assert (a.float() - b.float()).abs().mean() < 2.0


def test_pyav_seeking_matches_sequential_decoding(media):
    info = backends.probe_pyav(media["mp4"])
    assert info["frames"] == 40 and info["keyframes"] == [0, 8, 16, 24, 32]
    idx = [37, 2, 30, 9, 9]
    seek = backends.decode_pyav(media["mp4"], idx, pts=info["pts"], keyframes=info["keyframes"])
    plain = backends.decode_pyav(media["mp4"], idx)
    assert np.array_equal(seek, plain)
    assert [synth.frame_index(f) for f in seek] == idx


def test_bytes_and_paths_give_the_same_frames(media):
    with open(media["mp4"], "rb") as f:
        data = f.read()
    for backend in ("pyav", "decord"):
        if backend == "decord":
            pytest.importorskip("decord")
        assert torch.equal(read_video(data, [4, 11], backend), read_video(media["mp4"], [4, 11], backend))


@pytest.mark.parametrize("mode", list(synth.MODES))
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    path = synth.write_image(str(tmp_path / f"x.{synth.MODES[mode]}"), h=20, w=30, mode=mode)
    x = read_image(path)
    assert x.dtype == torch.uint8 and x.shape == (20, 30, 3)


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    from PIL import Image

    a = np.linspace(0, 65535, 20 * 30).astype(np.uint16).reshape(20, 30)
    Image.fromarray(a).save(tmp_path / "x.png")
    x = read_image(str(tmp_path / "x.png")).numpy()
    expect = np.clip(a / 65535.0 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(x[..., 0].astype(int) - expect).max() <= 1
    assert x[..., 0].max() == 255 and x[..., 0].min() == 0


def _cause(fn) -> str:
    with pytest.raises(BadSample) as e:
        fn()
    return e.value.cause


def test_bad_images_have_causes(tmp_path):
    synth.write_bytes(str(tmp_path / "empty.jpg"), b"")
    synth.write_bytes(str(tmp_path / "text.jpg"), b"hello" * 100)
    synth.write_image(str(tmp_path / "full.png"), h=64, w=64)
    synth.truncate(str(tmp_path / "full.png"), str(tmp_path / "trunc.png"), 0.3)
    synth.write_image(str(tmp_path / "big.png"), h=500, w=500, mode="1")
    assert _cause(lambda: read_image(str(tmp_path / "missing.jpg"))) == "missing_file"
    assert _cause(lambda: read_image(str(tmp_path / "empty.jpg"))) == "empty_file"
    assert _cause(lambda: read_image(str(tmp_path / "text.jpg"))) == "not_media"
    assert _cause(lambda: read_image(str(tmp_path / "trunc.png"))) == "corrupt"
    assert _cause(lambda: read_image(str(tmp_path / "big.png"), max_pixels=100_000)) == "too_large"


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bad_videos_have_causes(media, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    d = media["dir"]
    synth.write_bytes(str(d / "empty.mp4"), b"")
    synth.write_bytes(str(d / "text.mp4"), b"not a video" * 100)
    synth.truncate(media["mp4"], str(d / "trunc.mp4"), 0.5)
    synth.write_audio_only(str(d / "audio.mp4"))

    def read(name: str, idx=(0,)):
        return read_video(str(d / name), list(idx), backend)

    assert _cause(lambda: read("missing.mp4")) == "missing_file"
    assert _cause(lambda: read("empty.mp4")) == "empty_file"
    assert _cause(lambda: read("text.mp4")) == "not_media"
    assert _cause(lambda: read("trunc.mp4")) == "corrupt"
    assert _cause(lambda: read("audio.mp4")) == "no_video_stream"
    # An index past the last frame is refused before decord's get_batch is ever called.
    assert _cause(lambda: read("a.mp4", (0, 40))) == "truncated"


def test_pyav_time_limit_in_process(media):
    decoder = VideoDecoder("pyav", timeout_s=1e-4, isolation="none")
    with pytest.raises(BadSample) as e:
        decoder.read(media["long"], media["long"], list(range(0, 240, 3)), {"frames": 240})
    assert e.value.cause == "timeout"


def test_isolated_decoder_is_killed_on_timeout_and_restarts(media):
    pytest.importorskip("decord")
    decoder = VideoDecoder("decord", timeout_s=0.05, isolation="process")
    try:
        info = VideoDecoder("pyav").probe(media["long"], "long")
        with pytest.raises(BadSample) as e:
            decoder.read(media["long"], "long", list(range(240)) * 4, info)
        assert e.value.cause == "timeout"
        assert decoder._child is not None and decoder._child.restarts == 1
        decoder.timeout_s = 30.0
        frames = decoder.read(media["mp4"], "a", [5, 6], backends.probe_pyav(media["mp4"]))
        assert [synth.frame_index(f) for f in frames] == [5, 6]
    finally:
        decoder.close()


def test_decord_failures_fall_back_to_pyav(media):
    pytest.importorskip("decord")
    path = synth.write_video(str(media["dir"] / "w48.mp4"), frames=12, h=64, w=48)  # decord 0.6 refuses width 48
    decoder = VideoDecoder("auto", isolation="none")  # auto falls back; an explicit decord does not
    frames = decoder.read(path, path, [1, 7])
    assert [synth.frame_index(f) for f in frames] == [1, 7]
    try:
        read_video(path, [1, 7], "decord")  # exactly decord: no fallback
        decord_reads_it = True
    except BadSample as e:
        assert e.cause == "corrupt"
        decord_reads_it = False
    assert decoder.fallbacks == (0 if decord_reads_it else 1)

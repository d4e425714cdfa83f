"""Decode sizes for crops (against brute force) and in-process time limits (helper threads, DeadlineReader)."""

from __future__ import annotations

import io
import tarfile
import threading

import numpy as np
import pytest

from mmvit.data import BadSample
from mmvit.data.errors import TooManyStuckThreads
from mmvit.data.readers import backends, deadline, geometry
from mmvit.data.readers import image as image_reader
from mmvit.data.readers.deadline import DeadlineReader, ReadTimeout
from mmvit.data.readers.video import VideoDecoder
from mmvit.testing import media as synth

# --- decode sizes -----------------------------------------------------------------------------------------


def brute_axis(full: int, start: int, length: int, target: int) -> tuple[int, int, int]:
    """(decoded length, box start, box length) on one axis by enumeration.

    Decoded length: of the lengths d in 1..full at which the box, scaled by d / full, is at least ``target``
    long, the smallest even one, or ``full`` when no even one is (or when even the native frame does not
    reach the target: no upscaling in the decoder). Box length: ``target`` when the scaled box is less than
    2 pixels longer, else the largest whole number of pixels inside it. Box start: of all starts that keep
    the box inside the decoded frame, the one whose centre is nearest the scaled box's centre.
    """
    ok = [d for d in range(1, full + 1) if length * d >= target * full]
    even = [d for d in ok if d % 2 == 0 or d == full]
    d = min(even) if ok and length > target else full
    scaled = length * d / full
    n = target if target <= scaled + 1e-9 < target + 2 else max(k for k in range(1, d + 1) if k <= scaled + 1e-9)
    centre = (start + length / 2) * d / full
    start_d = min(range(d - n + 1), key=lambda s: (abs(s + n / 2 - centre), -s))
    return d, start_d, n


def test_decode_plan_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        H, W = (int(v) for v in rng.integers(1, 90, 2))
        bh, bw = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        top, left = int(rng.integers(0, H - bh + 1)), int(rng.integers(0, W - bw + 1))
        th, tw = (int(v) for v in rng.integers(1, 120, 2))
        (dh, dw), (t2, l2, h2, w2) = geometry.decode_plan((H, W), (top, left, bh, bw), (th, tw))
        ref_h, ref_w = brute_axis(H, top, bh, th), brute_axis(W, left, bw, tw)
        assert (dh, h2) == (ref_h[0], ref_h[2]) and (dw, w2) == (ref_w[0], ref_w[2]), (H, W, top, left, bh, bw, th, tw)
        # Start: the nearest to the centre (ties may round either way).
        assert abs(t2 - ref_h[1]) <= 1 and abs(l2 - ref_w[1]) <= 1
        assert 0 <= t2 and t2 + h2 <= dh and 0 <= l2 and l2 + w2 <= dw
        # An axis whose box is longer than its target lands exactly on it: the caller's resize is a no-op.
        assert h2 == min(th, bh) and w2 == min(tw, bw)
        assert (dh % 2 == 0 or dh == H) and (dw % 2 == 0 or dw == W)


def test_shared_decode_plan_covers_every_view():
    frame = (256, 340)
    boxes = [(0, 0, 256, 256), (0, 42, 256, 256), (0, 84, 256, 256), (0, 0, 256, 340)]
    targets = [(112, 112), (112, 112), (112, 112), (160, 208)]
    size, inside = geometry.shared_decode_plan(frame, boxes, targets)
    own = [geometry.decode_plan(frame, b, t)[0] for b, t in zip(boxes, targets)]
    assert size == (max(s[0] for s in own), max(s[1] for s in own))
    for (t, l, h, w), target in zip(inside, targets):
        assert 0 <= t and t + h <= size[0] and 0 <= l and l + w <= size[1]
        assert h >= target[0] and w >= target[1]  # never smaller than planned: only downscaled afterwards
    with pytest.raises(ValueError):
        geometry.decode_plan(frame, (0, 0, 300, 10), (8, 8))  # box outside the frame


def test_a_planned_size_gives_that_box_in_the_decoded_video(tmp_path):
    av = pytest.importorskip("av")  # noqa: F841
    path = synth.write_video(str(tmp_path / "v.mp4"), frames=4, h=96, w=160)
    box, target = (16, 40, 64, 96), (32, 48)
    size, (t, l, h, w) = geometry.decode_plan((96, 160), box, target)
    decoded = backends.decode_pyav(path, [2], size=size)[0]
    assert decoded.shape[:2] == size and (h, w) == target
    full = backends.decode_pyav(path, [2])[0].astype(np.float64)
    # The crop of the scaled frame is the box of the full frame, averaged down by 2x (within codec noise).
    ref = full[16:80, 40:136].reshape(32, 2, 48, 2, 3).mean((1, 3))
    assert np.abs(decoded[t:t + h, l:l + w].astype(np.float64) - ref).mean() < 6.0


# --- helper-thread time limits ------------------------------------------------------------------------------


@pytest.fixture()
def release():
    """An event that blocking test functions wait on; set at teardown so that no thread stays stuck."""
    event = threading.Event()
    yield event
    event.set()
    for _ in range(100):
        if not deadline.stuck_threads():
            break
        threading.Event().wait(0.02)


def test_call_returns_results_and_raises_errors_and_times_out(release):
    assert deadline.call(lambda a, b=0: a + b, 2, b=3, timeout_s=5.0, name="x") == 5
    with pytest.raises(KeyError):
        deadline.call(lambda: {}["k"], timeout_s=5.0, name="x")
    with pytest.raises(ReadTimeout) as e:
        deadline.call(release.wait, timeout_s=0.05, name="stuck.jpg", what="decoding")
    assert e.value.cause == "timeout" and e.value.path == "stuck.jpg" and isinstance(e.value, BadSample)
    assert deadline.stuck_threads() == ["stuck.jpg"]
    release.set()


def test_stuck_threads_are_bounded(release, monkeypatch):
    monkeypatch.setattr(deadline, "MAX_STUCK", 2)
    for name in ("a", "b"):
        with pytest.raises(ReadTimeout):
            deadline.call(release.wait, timeout_s=0.01, name=name)
    with pytest.raises(TooManyStuckThreads, match="a, b"):
        deadline.call(lambda: 1, timeout_s=1.0, name="c")
    release.set()
    for _ in range(100):  # the stuck calls return: their places are free again
        if not deadline.stuck_threads():
            break
        threading.Event().wait(0.02)
    assert deadline.call(lambda: 1, timeout_s=1.0, name="c") == 1


class BlockingFile:
    """A file object that serves ``data`` and then blocks in ``read`` until released (a stalled mount)."""

    def __init__(self, data: bytes, release: threading.Event):
        self.f, self.release, self.closed = io.BytesIO(data), release, False

    def read(self, n: int = -1) -> bytes:
        out = self.f.read(n)
        if not out:
            self.release.wait()
        return out

    def close(self) -> None:
        self.closed = True


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_deadline_reader_passes_data_through_and_times_out_on_a_blocked_read(release):
    data = _tar({f"s{i}.cls": str(i).encode() * (i + 1) for i in range(50)})
    with DeadlineReader(io.BytesIO(data), timeout_s=5.0, name="shard.tar", chunk=1000) as r:
        parts = [r.read(n) for n in (1, 511, 3000, 7)] + [r.read()]
    assert b"".join(parts) == data
    with DeadlineReader(io.BytesIO(data), timeout_s=5.0, name="shard.tar", chunk=777) as r:
        with tarfile.open(fileobj=r, mode="r|*") as tf:
            assert [ti.name for ti in tf] == [f"s{i}.cls" for i in range(50)]
    # A shard that stops delivering bytes before its end: tarfile's read times out instead of hanging.
    stalled = BlockingFile(data[: len(data) // 2], release)
    reader = DeadlineReader(stalled, timeout_s=0.1, name="stalled.tar", chunk=4096)
    with pytest.raises(ReadTimeout) as e, tarfile.open(fileobj=reader, mode="r|*") as tf:
        for _ in tf:
            pass
    assert e.value.cause == "timeout" and "stalled.tar" in str(e.value)
    assert not isinstance(e.value, OSError)  # tar readers treat OSError as damage and read on
    with pytest.raises(ReadTimeout):  # every later read that needs the file fails the same way at once
        reader.read()
    reader.close()
    assert not stalled.closed  # the stuck read still owns the file ...
    release.set()
    for _ in range(100):
        if stalled.closed:
            break
        threading.Event().wait(0.02)
    assert stalled.closed  # ... and closes it once the read returns


def test_image_decoding_has_a_time_limit_in_process(tmp_path, monkeypatch, release):
    path = synth.write_image(str(tmp_path / "x.png"), h=20, w=30)
    assert image_reader.decode_image(path, path, timeout_s=5.0).shape == (20, 30, 3)
    convert = image_reader.to_rgb
    monkeypatch.setattr(image_reader, "to_rgb", lambda img: release.wait() and convert(img))
    with pytest.raises(BadSample) as e:
        image_reader.decode_image(path, path, timeout_s=0.1)
    assert e.value.cause == "timeout"
    release.set()


def test_in_process_video_decoding_has_a_time_limit_beyond_pyav_checks(tmp_path, monkeypatch, release):
    pytest.importorskip("av")
    path = synth.write_video(str(tmp_path / "v.mp4"), frames=8)
    decoder = VideoDecoder("pyav", timeout_s=0.1, isolation="none")
    info = decoder.probe(path, path)
    run = backends.run_request
    # A decode that hangs inside one C call (no frame boundary where PyAV could check its deadline).
    monkeypatch.setattr(backends, "run_request", lambda r: release.wait() and run(r))
    with pytest.raises(BadSample) as e:
        decoder.read(path, path, [1, 2], info)
    assert e.value.cause == "timeout"
    release.set()
    monkeypatch.setattr(backends, "run_request", run)
    assert [synth.frame_index(f) for f in decoder.read(path, path, [1, 2], info)] == [1, 2]

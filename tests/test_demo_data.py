"""The demo dataset: lists, shards, sidecars, reproducibility, and that the videos really move as labelled."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")
av = pytest.importorskip("av")

from mmvit.demo import digits as demo_data

COUNTS = {"images": (6, 3, 3), "videos": (8, 2, 2)}  # 8 train clips: one per direction


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, demo_data.build(root, seed=3, counts=COUNTS)


def decode(path_or_bytes) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(src) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_shards(root, urls):
    """Samples as webdataset groups them: consecutive members sharing the name before the first dot."""
    samples = []
    for url in urls:
        with tarfile.open(root / url) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][ext] = tar.extractfile(member).read()
    return samples


def read_list(path):
    return [(p, label) for p, label in (line.split() for line in path.read_text().splitlines())]


def circular_centroid(frame: np.ndarray) -> np.ndarray:
    """(y, x) of the digit on a toroidal canvas: the circular mean of the pixels that differ from the background.

    The circular mean moves exactly with a shape that is rolled around the torus, so it is unaffected by wrapping.
    """
    frame = frame.astype(np.float32)
    weight = np.abs(frame - np.median(frame.reshape(-1, 3), axis=0)).sum(-1)  # background = the median colour
    weight = np.maximum(weight - 40.0, 0.0)  # ignore noise and compression ripple
    pos = []
    for axis, n in ((1, frame.shape[0]), (0, frame.shape[1])):
        z = (weight.sum(axis) * np.exp(2j * np.pi * np.arange(n) / n)).sum()
        pos.append(np.angle(z) / (2 * np.pi) * n)
    return np.array(pos)


def displacement(frames: np.ndarray) -> np.ndarray:
    """Total (dy, dx) travelled: consecutive steps (each well under half the canvas) unwrapped and summed."""
    size = np.array(frames.shape[1:3], np.float32)
    cents = np.stack([circular_centroid(f) for f in frames])
    steps = (np.diff(cents, axis=0) + size / 2) % size - size / 2
    return steps.sum(0)


def angle_error(vec: np.ndarray, direction: str) -> float:
    dy, dx = demo_data.direction_vector(direction)
    cos = (vec @ np.array([dy, dx])) / (np.linalg.norm(vec) + 1e-9)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def test_lists_and_manifest(built):
    root, manifest = built
    assert manifest["tasks"]["digits"]["classes"] == [str(d) for d in range(10)]
    assert manifest["tasks"]["motion"]["classes"] == list(demo_data.DIRECTIONS)
    for si, split in enumerate(demo_data.SPLITS):
        images, videos = read_list(root / f"{split}_images.txt"), read_list(root / f"{split}_videos.txt")
        assert len(images) == COUNTS["images"][si] and len(videos) == COUNTS["videos"][si]
        assert all(label in manifest["tasks"]["digits"]["classes"] and p.endswith(".png") for p, label in images)
        assert all(label in demo_data.DIRECTIONS and p.endswith(".mp4") for p, label in videos)
        assert all((root / p).is_file() and not p.startswith("/") for p, _ in images + videos)
        per_class = manifest["splits"][split]["per_class"]
        assert sum(per_class["digits"]) == len(images) and sum(per_class["motion"]) == len(videos)


def test_shards_match_files_and_sidecars(built):
    root, manifest = built
    for si, split in enumerate(demo_data.SPLITS):
        labels = dict(read_list(root / f"{split}_images.txt") + read_list(root / f"{split}_videos.txt"))
        samples = read_shards(root, manifest["splits"][split]["shards"])
        assert len(samples) == len(labels) == len({s["__key__"] for s in samples})
        for s in samples:
            assert set(s) in ({"__key__", "png", "cls", "json"}, {"__key__", "mp4", "cls", "json"})
            meta = json.loads(s["json"])
            label = s["cls"].decode()
            assert label == str(meta["label"])
            if meta["kind"] == "image":
                data = s["png"]
                arr = np.asarray(Image.open(io.BytesIO(data)))
                assert arr.shape == (meta["height"], meta["width"], 3) and meta["frames"] == 1
                assert 32 <= min(arr.shape[:2]) and max(arr.shape[:2]) <= 96
                path = f"images/{split}/{s['__key__'].rsplit('_', 1)[1]}.png"
            else:
                data = s["mp4"]
                frames = decode(data)
                assert frames.shape == (meta["frames"], meta["height"], meta["width"], 3)
                assert 8 <= meta["frames"] <= 16 and meta["height"] % 2 == 0 and meta["width"] % 2 == 0
                with av.open(io.BytesIO(data)) as c:
                    assert float(c.streams.video[0].average_rate) == meta["fps"]
                path = f"videos/{split}/{s['__key__'].rsplit('_', 1)[1]}.mp4"
            assert data == (root / path).read_bytes() and labels[path] == label


def test_scans_disjoint_between_splits(built):
    root, manifest = built
    used = []
    for split in demo_data.SPLITS:
        samples = read_shards(root, manifest["splits"][split]["shards"])
        used.append({json.loads(s["json"])["scan"] for s in samples})  # images and the digits shown in clips
    assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])


def test_same_seed_same_data(built, tmp_path):
    root, _ = built
    again = demo_data.build(tmp_path, seed=3, counts=COUNTS, shards=False)
    assert not again["splits"]["train"]["shards"]
    for split in demo_data.SPLITS:
        for kind in ("images", "videos"):
            assert (root / f"{split}_{kind}.txt").read_text() == (tmp_path / f"{split}_{kind}.txt").read_text()
        for p, _ in read_list(root / f"{split}_images.txt"):
            assert (root / p).read_bytes() == (tmp_path / p).read_bytes()
        for p, _ in read_list(root / f"{split}_videos.txt"):
            assert np.array_equal(decode(root / p), decode(tmp_path / p))


def test_videos_move_in_labelled_direction(built):
    root, _ = built
    for split in demo_data.SPLITS:
        for p, label in read_list(root / f"{split}_videos.txt"):
            frames = decode(root / p)
            direction = label
            vec = displacement(frames)
            assert angle_error(vec, direction) < 22.5, (p, direction, vec)
            # Visible motion: at least 1.5 px a frame (a 32 px clip moves >= 2.2 px a frame by construction).
            assert np.linalg.norm(vec) / (len(frames) - 1) > 1.5, (p, vec)


def test_every_direction_before_encoding():
    scans, _ = demo_data.load_digit_scans()
    for i, direction in enumerate(demo_data.DIRECTIONS):
        rng = np.random.default_rng(i)
        clip = demo_data.render_motion_clip(scans[i], direction, (40, 72), 9, rng)
        assert clip.shape == (9, 40, 72, 3) and clip.dtype == np.uint8
        assert angle_error(displacement(clip), direction) < 10.0


def test_cli_skips_when_up_to_date(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "make_demo_data.py"
    spec = importlib.util.spec_from_file_location("make_demo_data", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--out", str(tmp_path), "--images-per-split", "2,1,1", "--videos-per-split", "1,1,1", "--no-shards"]
    assert cli.main(args) == 0 and "building" in capsys.readouterr().out
    assert cli.main(args) == 0 and "up to date" in capsys.readouterr().out
    assert demo_data.current_manifest(tmp_path, 0, {"images": (2, 1, 1), "videos": (1, 1, 1)}, shards=False)
    assert demo_data.current_manifest(tmp_path, 1, {"images": (2, 1, 1), "videos": (1, 1, 1)}, shards=False) is None
    assert cli.main([*args, "--seed", "1"]) == 0 and "building" in capsys.readouterr().out

"""Webdataset shards: make_shards output, sidecars, corrupt and truncated shards, exact-once evaluation."""

from __future__ import annotations

import collections
import json
import logging
import os
import tarfile

import pytest

from mmvit.data import build_loader
from mmvit.data.readers.backends import probe_pyav
from mmvit.data.shards import write_shards
from mmvit.data.sources.webdataset import read_shard
from mmvit.testing import media

pytest.importorskip("av")
pytest.importorskip("webdataset")


@pytest.fixture(autouse=True)
def quiet():
    logging.getLogger("mmvit.data").setLevel(logging.ERROR)
    yield
    logging.getLogger("mmvit.data").setLevel(logging.NOTSET)


def member_offsets(path: str) -> dict[str, int]:
    """Offset of each member's own header block (after any pax/GNU extension headers)."""
    with tarfile.open(path) as tf:
        return {m.name: m.offset_data - 512 for m in tf.getmembers()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards of 3 samples from a list of images and videos; shard 1 gets a corrupt member header, shard 3 is
    cut off in the middle. Returns the index, the keys that must survive, and the damage."""
    root = tmp_path_factory.mktemp("wds")
    corpus = media.make_corpus(str(root / "src"))
    lines = [f"{path} {label}" for path, label in corpus["good"].items()]
    lines += ["img/missing.jpg 1", "vid/text.mp4 1", "img/trunc.png 0"]  # make_shards skips these
    with open(root / "all.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    index = write_shards(str(root / "all.txt"), str(root / "out" / "train-%04d.tar"), root=str(root / "src"),
                         maxcount=3, report=lambda s: None)
    names = index["shards"]
    keys: dict[str, list[str]] = {}
    for name in names:
        with tarfile.open(root / "out" / name) as tf:
            keys[name] = sorted({m.name.split(".")[0] for m in tf.getmembers()})
    lost: set[str] = set()
    # Shard 1: break the checksum of the second sample's media member header.
    victim = keys[names[1]][1]
    path = root / "out" / names[1]
    member = next(n for n in member_offsets(str(path)) if n.startswith(victim) and not n.endswith((".cls", ".json")))
    data = bytearray(path.read_bytes())
    off = member_offsets(str(path))[member]
    data[off + 148:off + 156] = b"garbage!"
    path.write_bytes(bytes(data))
    lost.add(victim)
    # Shard 3: cut in the middle of the second sample.
    path = root / "out" / names[3]
    second = keys[names[3]][1]
    off = member_offsets(str(path))[f"{second}.cls"]
    path.write_bytes(path.read_bytes()[: off + 100])
    lost |= set(keys[names[3]][1:])
    survivors = {k for ks in keys.values() for k in ks} - lost
    return {"index": index["index"], "survivors": survivors, "num_samples": index["num_samples"],
            "skipped": index["skipped"], "good": corpus["good"], "root": root, "names": names}


def test_make_shards_keeps_bytes_labels_and_sidecars(shards):
    assert shards["num_samples"] == len(shards["good"]) and shards["skipped"] == 3
    with open(shards["index"]) as f:
        meta = json.load(f)
    assert meta["num_samples"] == len(shards["good"]) and len(meta["shards"]) == len(shards["names"])
    items = list(read_shard(os.path.join(os.path.dirname(shards["index"]), meta["shards"][0])))
    assert len(items) == 3 and all(i.error is None for i in items)
    for item in items:
        assert item.info["width"] > 0 and item.label == shards["good"][item.info["path"]]
    video = next(i for n in meta["shards"] for i in read_shard(os.path.join(os.path.dirname(shards["index"]), n))
                 if i.kind == "video" and i.error is None)
    probed = probe_pyav(video.data)
    assert {k: probed[k] for k in ("width", "height", "frames")} == \
        {k: video.info[k] for k in ("width", "height", "frames")}


def test_damaged_shards_lose_only_the_damaged_samples(shards):
    out_dir = os.path.dirname(shards["index"])
    items = [i for n in shards["names"] for i in read_shard(os.path.join(out_dir, n))]
    good = {i.id for i in items if i.error is None}
    assert good == shards["survivors"]
    causes = collections.Counter(i.error.cause for i in items if i.error is not None)
    assert causes == {"corrupt_tar": 2}  # one bad header, one truncated shard


@pytest.mark.parametrize("world_size,num_workers", [(2, 2), (1, 0)])
def test_eval_over_shards_delivers_every_intact_sample_once(shards, world_size, num_workers):
    cfg = {"sources": [{"type": "webdataset", "index": shards["index"]}], "seq_len": 96, "batch_rows": 2,
           "patch_sizes": [8], "tubelet": 2, "frames": 4, "resolution": {"type": "fixed", "values": [24]},
           "video_backend": "pyav", "max_bad_fraction": 0.5, "num_workers": num_workers}
    seen = collections.Counter()
    bad = collections.Counter()
    for rank in range(world_size):
        loader, control = build_loader(cfg, split="val", rank=rank, world_size=world_size, seed=0, train=False)
        for b in loader:
            assert b.shape == (2, 96)
            seen.update(m["id"] for m in b.meta)
        bad.update(control.stats()["bad"])
    assert set(seen) == shards["survivors"] and max(seen.values()) == 1
    assert bad == {"corrupt_tar": 2}


def test_training_over_shards_mixed_with_a_list(shards):
    src = str(shards["root"] / "src")
    cfg = {"sources": [{"type": "webdataset", "index": shards["index"], "weight": 2},
                       {"type": "image_list", "list": os.path.join(src, "images.txt")}],
           "seq_len": 64, "batch_rows": 2, "patch_sizes": [8, 16], "tubelet": 2, "frames": 2,
           "resolution": {"type": "uniform", "min": 16, "max": 40}, "video_backend": "pyav", "num_classes": 3,
           "max_image_pixels": 4_000_000, "max_bad_fraction": 0.9, "num_workers": 2}
    loader, control = build_loader(cfg, split="train", rank=0, world_size=1, seed=0, train=True)
    assert len(loader) == control.batches_per_epoch >= 1  # estimated from the index's sample count
    sources = collections.Counter()
    for i, b in enumerate(loader):
        assert b.shape == (2, 64)
        sources.update("wds" if "#" in m["path"] else "list" for m in b.meta)
        if i == 5:
            break
    assert sources["wds"] > 0 and sources["list"] > 0


def test_every_rank_gets_the_same_number_of_training_batches_over_uneven_shards(shards):
    """Shards split unevenly over the ranks (and one of them damaged): every rank still yields the epoch length
    it announces, the same on all ranks, so no rank waits in a collective for a batch that never comes."""
    n_shards = len(json.load(open(shards["index"]))["shards"])
    world = next(w for w in (3, 4, 5) if n_shards % w)
    cfg = {"sources": [{"type": "webdataset", "index": shards["index"]}],
           "seq_len": 64, "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "frames": 2,
           "resolution": {"type": "uniform", "min": 16, "max": 32}, "video_backend": "pyav", "num_classes": 3,
           "max_bad_fraction": 0.9, "num_workers": 1}
    announced, delivered = [], []
    for rank in range(world):
        loader, control = build_loader(cfg, split="train", rank=rank, world_size=world, seed=0, train=True)
        announced.append(len(loader))
        delivered.append(sum(1 for _ in loader))
    assert announced[0] >= 1 and len(set(announced)) == 1
    assert delivered == announced

"""Sources, partitions and mixing: list formats, disjoint slots, weights, packing selection, pixel formats."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from mmvit.data import BadSample
from mmvit.data.augment import to_sample
from mmvit.data.draws import Mixer
from mmvit.data.packer import select_examples
from mmvit.data.readers import image as image_reader
from mmvit.data.sources import ImageFolder, ImageList, SourceContext, VideoList
from mmvit.data.sources.base import IndexedSource, Item
from mmvit.data.sources.annotations import parse_list
from mmvit.packing import first_fit_decreasing
from mmvit.testing import media


def _rows(path):
    return [(e.path, e.label, e.line) for e in parse_list(str(path)).entries]


def test_list_formats(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nx/my video.mp4 3\n\ny.mp4 0\n")
    assert _rows(tmp_path / "a.txt") == [("x/my video.mp4", "3", 2), ("y.mp4", "0", 4)]
    (tmp_path / "b.csv").write_text("path,label\nx.mp4,1\ny.mp4,2\n")
    assert _rows(tmp_path / "b.csv") == [("x.mp4", "1", 2), ("y.mp4", "2", 3)]
    (tmp_path / "c.csv").write_text("x.mp4,1\ny.mp4,2\n")
    assert _rows(tmp_path / "c.csv") == [("x.mp4", "1", 1), ("y.mp4", "2", 2)]
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "abseiling,0347ZoDXyP0,188,198,train\n\"air drumming\",-0bD1r2aQhA,10,20,train\n")
    assert _rows(tmp_path / "k.csv") == [("0347ZoDXyP0_000188_000198.mp4", "abseiling", 2),
                                         ("-0bD1r2aQhA_000010_000020.mp4", "air drumming", 3)]
    src = VideoList(str(tmp_path / "k.csv"), root=str(tmp_path / "videos"))
    assert src.classes == ["abseiling", "air drumming"] and [src.item(i).label for i in range(2)] == [0, 1]
    src = VideoList(str(tmp_path / "k.csv"), classes=["x", "air drumming", "abseiling"])
    assert [src.item(i).label for i in range(2)] == [2, 1]
    src = VideoList(str(tmp_path / "k.csv"), path_template="{label}/{youtube_id}.mp4")
    assert src.item(1).id == "air drumming/-0bD1r2aQhA.mp4"


def test_image_folder_labels_and_root_escape(tmp_path):
    for cls in ("b_dog", "a_cat"):
        (tmp_path / "imgs" / cls / "sub").mkdir(parents=True)
        media.write_image(str(tmp_path / "imgs" / cls / "1.png"))
        media.write_image(str(tmp_path / "imgs" / cls / "sub" / "2.JPG"))
        (tmp_path / "imgs" / cls / "notes.txt").write_text("x")
    src = ImageFolder(str(tmp_path / "imgs"))
    assert len(src) == 4 and [src.item(i).label for i in range(4)] == [0, 0, 1, 1]
    assert src.item(1).id == "a_cat/sub/2.JPG"
    # "../imgs/..." comes back inside root; an absolute path elsewhere and "../../" do not.
    (tmp_path / "l.txt").write_text("../imgs/a_cat/1.png 0\n/etc/passwd 1\na_cat/../../l.txt 0\n")
    lst = ImageList(str(tmp_path / "l.txt"), root=str(tmp_path / "imgs"))
    causes = [lst.item(i).error.cause if lst.item(i).error else None for i in range(3)]
    assert causes == [None, "path_outside_root", "path_outside_root"]
    allowed = ImageList(str(tmp_path / "l.txt"), root=str(tmp_path / "imgs"),
                        ctx=SourceContext(allow_outside_root=True))
    assert all(allowed.item(i).error is None for i in range(3))


class Numbers(IndexedSource):
    def __init__(self, n: int, weight: float = 1.0, name: str = "n"):
        self.n, self.weight, self.name = n, weight, name

    def __len__(self) -> int:
        return self.n

    def item(self, index: int) -> Item:
        return Item(kind="image", path=f"{self.name}/{index}", id=f"{self.name}/{index}", label=0)


def test_slots_read_disjoint_parts_and_cycle_in_training():
    src = Numbers(103)
    parts = []
    for slot in range(6):
        stream = src.stream(slot, 6, seed=1, sid=0, train=False)
        parts.append([stream.next().id for _ in range(len(range(slot, 103, 6)))])
        assert stream.next() is None  # evaluation: one pass
    flat = [x for p in parts for x in p]
    assert len(flat) == len(set(flat)) == 103
    train = [src.stream(slot, 6, seed=1, sid=0, train=True) for slot in range(6)]
    first_cycle = [[s.next().id for _ in range(len(range(slot, 103, 6)))] for slot, s in enumerate(train)]
    flat = [x for p in first_cycle for x in p]
    assert len(set(flat)) == 103 and flat != [x for p in parts for x in p]  # shuffled, disjoint
    assert all(s.next() is not None for s in train)  # endless: the next cycle starts


def test_mixing_follows_the_weights_and_is_reproducible():
    sources = [Numbers(50, weight=3.0, name="a"), Numbers(20, weight=1.0, name="b")]
    mixer = Mixer(sources, 0, 1, seed=5, train=True)
    ids = [mixer.next().item.id for _ in range(4000)]
    frac = collections.Counter(i.split("/")[0] for i in ids)["a"] / len(ids)
    assert 0.72 < frac < 0.78
    again = Mixer(sources, 0, 1, seed=5, train=True)
    assert [again.next().item.id for _ in range(200)] == ids[:200]
    other = Mixer(sources, 0, 1, seed=6, train=True)
    assert [other.next().item.id for _ in range(200)] != ids[:200]
    # Seeking back to a saved state replays the same draws.
    mixer = Mixer(sources, 0, 1, seed=5, train=True)
    for _ in range(37):
        mixer.next()
    state = mixer.state()
    ahead = [mixer.next().item.id for _ in range(30)]
    mixer.seek(state)
    assert [mixer.next().item.id for _ in range(30)] == ahead


def test_selection_packs_oldest_first_and_never_overflows():
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq_len, rows = int(rng.integers(8, 64)), int(rng.integers(1, 5))
        cand = [(k, int(rng.integers(1, seq_len + 1))) for k in range(int(rng.integers(1, 30)))]
        per_row = None if rng.random() < 0.5 else int(rng.integers(1, 4))
        keys = select_examples(cand, seq_len, rows, per_row)
        assert keys and keys[0] == 0  # the oldest always fits an empty batch
        lengths = [n for k, n in cand if k in keys]
        assert len(first_fit_decreasing(lengths, seq_len, per_row)) <= rows


def test_augmentation_is_identical_across_frames():
    frame = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    clip = np.stack([frame] * 4)
    x = to_sample(clip, (3, 5, 20, 30), True, (16, 24), [0.5] * 3, [0.25] * 3, video=True)
    assert x.shape == (3, 4, 16, 24)
    assert all(torch.equal(x[:, 0], x[:, t]) for t in range(4))
    single = to_sample(frame[None], (3, 5, 20, 30), True, (16, 24), [0.5] * 3, [0.25] * 3, video=False)
    assert torch.equal(single, x[:, 0])
    plain = to_sample(frame[None], (3, 5, 20, 30), False, (16, 24), [0.5] * 3, [0.25] * 3, video=False)
    assert torch.allclose(plain.flip(-1), single, atol=1e-4)


def test_unconvertible_pixel_formats_are_bad_samples(tmp_path, monkeypatch):
    path = media.write_image(str(tmp_path / "x.png"))

    def refuse(img):
        raise ValueError("conversion from La to L not supported")  # what Pillow says for premultiplied modes

    monkeypatch.setattr(image_reader, "to_rgb", refuse)
    with pytest.raises(BadSample) as e:
        image_reader.decode_image(path, path)
    assert e.value.cause == "bad_pixel_format"

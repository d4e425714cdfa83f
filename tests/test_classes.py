"""Class tables: labels never change silently; every split maps through the training split's table."""

from __future__ import annotations

import json

import pytest

from mmvit.data import build_loader
from mmvit.data.classes import ClassTables, resolve_class_tables, tables_of, with_tables
from mmvit.data.sources import ImageFolder
from mmvit.testing import media


def _images(root, names):
    for n in names:
        media.write_image(str(root / n), h=24, w=32)


def _loader_labels(data, split, tables):
    loader, control = build_loader(data, split=split, rank=0, world_size=1, seed=0, train=False, tables=tables)
    out = {m["id"]: m["label"] for b in loader for m in b.meta}
    return out, control.stats()


def test_a_stray_name_in_an_integer_list_is_refused_with_file_line_and_value(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(6)])
    lines = ["0.png 0", "1.png 1", "2.png 2", "3.png 10", "4.png cat", "5.png 11"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = {"data": {"sources": [{"type": "image_list", "list": str(tmp_path / "train.txt")}]}}
    with pytest.raises(ValueError) as e:
        resolve_class_tables(cfg)
    assert f"{tmp_path / 'train.txt'}:5" in str(e.value) and "'cat'" in str(e.value)
    # With a table that says how names map, integers stay the integers written and the name maps.
    cfg["tasks"] = {"default": {"classes": [f"c{i}" for i in range(12)] + ["cat"]}}
    tables = resolve_class_tables(cfg)
    labels, _ = _loader_labels(cfg["data"], "train", tables)
    assert labels == {"0.png": 0, "1.png": 1, "2.png": 2, "3.png": 10, "4.png": 12, "5.png": 11}


def test_integer_labels_stay_the_integers_written(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(4)])
    (tmp_path / "train.txt").write_text("0.png 0\n1.png 2\n2.png 10\n3.png 11\n")
    cfg = {"data": {"sources": [{"type": "image_list", "list": str(tmp_path / "train.txt")}]}}
    tables = resolve_class_tables(cfg)
    assert tables["default"].integer and len(tables["default"]) == 12  # 0 .. largest
    labels, _ = _loader_labels(cfg["data"], "train", tables)
    assert labels == {"0.png": 0, "1.png": 2, "2.png": 10, "3.png": 11}  # never sorted as strings


def test_a_split_missing_classes_keeps_the_training_indices(tmp_path):
    _images(tmp_path, ["a.png", "c.png", "d.png", "z.png", "v1.png", "v2.png", "v3.png"])
    (tmp_path / "train.txt").write_text("a.png ant\nc.png cat\nd.png dog\nz.png zebra\n")
    (tmp_path / "val.txt").write_text("v1.png dog\nv2.png zebra\nv3.png unicorn\n")
    data = {"splits": {"train": {"sources": [{"type": "image_list", "list": str(tmp_path / "train.txt")}]},
                       "val": {"sources": [{"type": "image_list", "list": str(tmp_path / "val.txt")}]}},
            "max_bad_fraction": 1.0, "num_workers": 0}
    tables = resolve_class_tables({"data": data})
    assert tables["default"].names == ("ant", "cat", "dog", "zebra")
    labels, stats = _loader_labels(data, "val", tables)
    assert labels == {"v1.png": 2, "v2.png": 3}  # dog = 2 as in training, not 0 as in a per-file table
    assert stats["bad"] == {"unknown_class": 1}  # a name the table does not have is a counted bad sample
    # The loader's default table is the training split's too.
    assert _loader_labels(data, "val", None)[0] == labels


def test_image_folder_with_a_missing_class_folder_keeps_the_training_indices(tmp_path):
    for cls in ("ant", "cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        _images(tmp_path / "train" / cls, ["1.png"])
    (tmp_path / "val" / "dog").mkdir(parents=True)
    _images(tmp_path / "val" / "dog", ["1.png"])
    data = {"splits": {"train": {"sources": [{"type": "image_folder", "root": str(tmp_path / "train")}]},
                       "val": {"sources": [{"type": "image_folder", "root": str(tmp_path / "val")}]}}, "num_workers": 0}
    tables = resolve_class_tables({"data": data})
    assert _loader_labels(data, "val", tables)[0] == {"dog/1.png": 2}
    assert ImageFolder(str(tmp_path / "val")).item(0).label == 0  # on its own a folder knows only itself


def test_webdataset_text_labels_map_through_the_table(tmp_path):
    from mmvit.data.shards import write_shards

    _images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "train.txt").write_text("a.png ant\nb.png cat\n")
    (tmp_path / "val.txt").write_text("c.png cat\n")
    index = write_shards(str(tmp_path / "val.txt"), str(tmp_path / "shards" / "val-%06d.tar"), report=lambda m: None)
    data = {"splits": {"train": {"sources": [{"type": "image_list", "list": str(tmp_path / "train.txt")}]},
                       "val": {"sources": [{"type": "webdataset", "index": index["index"]}]}}, "num_workers": 0}
    tables = resolve_class_tables({"data": data})
    labels, _ = _loader_labels(data, "val", tables)
    assert list(labels.values()) == [1]  # cat is 1 in training's {ant, cat}; the shard's own list has only cat


def test_tables_travel_with_the_config_and_size_the_heads(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "digits.txt").write_text("a.png 3\nb.png 9\n")
    (tmp_path / "moves.txt").write_text("c.png N\n")
    cfg = {"tasks": {"digits": {"num_classes": 10}, "moves": {"classes": ["N", "E", "S", "W"], "weight": 2.0}},
           "model": {"variant": "Ti/16", "depth": 1},
           "data": {"sources": [{"type": "image_list", "list": str(tmp_path / "digits.txt"), "task": "digits"},
                                {"type": "image_list", "list": str(tmp_path / "moves.txt"), "task": "moves"}]}}
    tables = resolve_class_tables(cfg)
    assert tables.tasks == ["digits", "moves"] and len(tables["digits"]) == 10 and tables["moves"].names[2] == "S"
    resolved = with_tables(cfg, tables)
    assert resolved["model"]["tasks"] == {"digits": 10, "moves": 4} and resolved["tasks"]["moves"]["weight"] == 2.0
    again = tables_of(resolved)  # what eval and predict read back from the run's config.yaml
    assert again == tables or all(again[t].names == tables[t].names for t in tables)
    assert ClassTables.from_json(json.loads(json.dumps(tables.to_json())))["moves"].names == tables["moves"].names
    with pytest.raises(ValueError, match="names no task"):
        resolve_class_tables({**cfg, "data": {"sources": [{"type": "image_list", "list": str(tmp_path / "moves.txt")}]}})
    with pytest.raises(ValueError, match="num_classes"):
        with_tables({**cfg, "model": {"num_classes": 7}}, tables)

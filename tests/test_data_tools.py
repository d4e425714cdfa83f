"""tools/check_data.py and tools/make_shards.py from the command line."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import yaml

from mmvit.testing import media

pytest.importorskip("av")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return media.make_corpus(str(tmp_path_factory.mktemp("tools") / "root"))


def test_check_data_lists_every_bad_sample_with_its_reason(corpus, tmp_path, capsys):
    cfg = {"name": "check", "data": {
        "num_classes": 3, "max_image_pixels": 4_000_000, "video_backend": "pyav",
        "splits": {"val": {"sources": [{"type": "image_list", "list": corpus["images"]},
                                       {"type": "video_list", "list": corpus["videos"]}]}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert tool("check_data").main([str(path), "--split", "val"]) == 1
    out = capsys.readouterr().out
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD ")]
    assert len(bad_lines) == len(corpus["bad"])
    for rel, cause in corpus["bad"].items():
        assert any(line.startswith(f"BAD {cause}: ") and line.split(": ", 1)[1].startswith(
            os.path.join(os.path.dirname(corpus["images"]), rel)) for line in bad_lines), (rel, cause)
    assert f"{len(corpus['good']) + len(corpus['bad'])} samples checked: {len(corpus['good'])} good" in out
    assert "task 'default': 3 classes" in out  # the class table it would use
    # Only the good ones: exit status 0.
    good = tmp_path / "good.txt"
    good.write_text("".join(f"{p} {lab}\n" for p, lab in corpus["good"].items() if p.startswith("img/")))
    cfg["data"]["splits"]["val"]["sources"] = [{"type": "image_list", "list": str(good),
                                                "root": os.path.dirname(corpus["images"])}]
    path.write_text(yaml.safe_dump(cfg))
    assert tool("check_data").main([str(path), "--split", "val", "--set", "data.video_backend=decord"]) == 0


def test_check_data_prints_the_class_table_and_flags_classes_without_training_samples(tmp_path, capsys):
    for name in ("a", "b", "c", "d"):
        media.write_image(str(tmp_path / f"{name}.png"), h=16, w=16)
    (tmp_path / "train.txt").write_text("a.png dog\nb.png cat\nc.png dog\n")
    (tmp_path / "val.txt").write_text("d.png cat\n")
    cfg = {"tasks": {"default": {"classes": ["cat", "dog", "zebra"]}}, "data": {"splits": {
        "train": {"sources": [{"type": "image_list", "list": str(tmp_path / "train.txt")}]},
        "val": {"sources": [{"type": "image_list", "list": str(tmp_path / "val.txt")}]}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert tool("check_data").main([str(path), "--split", "val"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["0", "cat", "1", "1"] in rows and ["1", "dog", "2", "0"] in rows and ["2", "zebra", "0", "0"] in rows
    assert ["WARNING:", "task", "'default':", "1", "class(es)", "with", "no", "training", "sample:", "zebra"] in rows
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\nc.png cat\n")
    cfg.pop("tasks")
    path.write_text(yaml.safe_dump(cfg))
    assert tool("check_data").main([str(path)]) == 1
    assert f"{tmp_path / 'train.txt'}:3" in capsys.readouterr().out  # the mixed file, named with its line


def test_make_shards_cli(corpus, tmp_path, capsys):
    out = tmp_path / "shards" / "s-%03d.tar"
    assert tool("make_shards").main([corpus["videos"], "--out", str(out), "--maxcount", "2", "--shuffle"]) == 0
    index = json.loads((tmp_path / "shards" / "s.json").read_text())
    n_good = sum(1 for p in corpus["good"] if p.startswith("vid/"))
    assert index["num_samples"] == n_good and len(index["shards"]) == (n_good + 1) // 2
    assert all((tmp_path / "shards" / s).exists() for s in index["shards"])
    err = capsys.readouterr().err
    assert err.count("skip ") == sum(1 for p in corpus["bad"] if p.startswith("vid/"))

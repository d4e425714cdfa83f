"""tools/predict.py and mmvit.load(...).predict: every file gets its top classes per task, bad files their
reason; the probabilities equal the evaluation path's softmax of the same files."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
import yaml
from safetensors.torch import save_file

import mmvit
from mmvit.testing import media

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOVES = ["N", "E", "S", "W"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    files = base / "files"
    files.mkdir()
    for i, (h, w) in enumerate([(24, 40), (48, 32), (36, 36)]):
        media.write_image(str(files / f"img{i}.png"), h=h, w=w, seed=i)
    media.write_video(str(files / "clip.mp4"), frames=8, h=32, w=48)
    (files / "broken.mp4").write_bytes(b"not a video at all\n" * 20)
    cfg = {"seed": 0,
           "tasks": {"digits": {"classes": [str(i) for i in range(10)]}, "moves": {"classes": MOVES}},
           "model": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8,
                     "tasks": {"digits": 10, "moves": 4}, "tokenizer": {"type": "central_frame", "frames": 2},
                     "pos_embed": {"type": "learned", "fractional": True, "max_len": [8, 16, 16]},
                     "head": {"type": "linear", "zero_init": False}},
           "data": {"seq_len": 64, "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "frames": 4,
                    "resolution": 32, "num_workers": 0, "video_backend": "pyav", "max_bad_fraction": 1.0}}
    torch.manual_seed(0)
    model = mmvit.build_model(cfg)
    rundir = base / "run"
    rundir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(rundir / "model.safetensors"))
    (rundir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return {"dir": rundir, "files": files, "cfg": cfg}


def _tool():
    spec = importlib.util.spec_from_file_location("predict_tool", os.path.join(ROOT, "tools", "predict.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_predicts_every_file_per_task_and_lists_bad_ones(run, tmp_path, capsys):
    out = tmp_path / "preds.json"
    code = _tool()(["--checkpoint", str(run["dir"]), str(run["files"]), "--topk", "3", "--out", str(out)])
    assert code == 1  # one file could not be read
    data = json.loads(out.read_text())
    good = {"img0.png", "img1.png", "img2.png", "clip.mp4"}
    assert {(os.path.basename(p["path"]), p["task"]) for p in data["predictions"]} == \
        {(f, t) for f in good for t in ("digits", "moves")}
    for p in data["predictions"]:
        probs = [v for _, v in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        names = MOVES if p["task"] == "moves" else [str(i) for i in range(10)]
        assert all(n in names for n, _ in p["top"])
    assert [(os.path.basename(f["path"]), f["cause"]) for f in data["failures"]] == [("broken.mp4", "not_media")]
    printed = capsys.readouterr().out
    assert "BAD not_media" in printed and "4 files predicted, 1 could not be read" in printed


def test_probabilities_equal_the_evaluation_paths_softmax(run, tmp_path):
    """Predicting one task of a file gives the softmax of what the evaluation runner scores for it."""
    from mmvit.eval.runner import evaluate_loader

    loaded = mmvit.load(str(run["dir"]))
    got = {os.path.basename(p["path"]): dict(p["top"]) for p in
           loaded.predict([str(run["files"] / "img1.png"), str(run["files"] / "clip.mp4")], task="moves", topk=4)}
    lst = tmp_path / "moves.txt"
    lst.write_text(f"{run['files'] / 'img1.png'} N\n{run['files'] / 'clip.mp4'} N\n")
    data = {**run["cfg"]["data"], "splits": {"test": {"sources": [
        {"type": "image_list", "list": str(lst), "task": "moves", "root": "/"}]}}, "allow_outside_root": True}
    # the clip through an image list would not be a video: score it through a video list of its own
    (tmp_path / "clip.txt").write_text(f"{run['files'] / 'clip.mp4'} N\n")
    (tmp_path / "img.txt").write_text(f"{run['files'] / 'img1.png'} N\n")
    data["splits"]["test"]["sources"] = [
        {"type": "image_list", "list": str(tmp_path / "img.txt"), "task": "moves", "root": "/"},
        {"type": "video_list", "list": str(tmp_path / "clip.txt"), "task": "moves", "root": "/"}]
    from mmvit.data import build_loader

    loader, _ = build_loader(data, split="test", rank=0, world_size=1, seed=0, train=False, tables=loaded.tables)
    out = evaluate_loader(loaded.model, loader, warmup=False)
    for vid, logits in zip(out.scores.video_ids, out.scores.logits):
        name = os.path.basename(vid.split(":", 1)[-1])
        ref = logits[:4].softmax(-1)
        for i, cls in enumerate(MOVES):
            assert got[name][cls] == pytest.approx(float(ref[i]), abs=1e-5)
    assert loaded.classes["moves"] == MOVES and loaded.preprocess["frames"] == 4

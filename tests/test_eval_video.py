"""tools/eval_video.py on a tiny generated dataset: runner order, sharding over ranks, checkpoints, the CLI.

The data is the demo dataset's generator (real digit scans; 6 moving-digit mp4s and 4 PNGs in the test
split); the model is a 1-block NaViT with a random (non-zero) head saved as model.safetensors + config.yaml.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

import mmvit
from mmvit.eval import (
    EvalSettings,
    RankOutput,
    ViewScores,
    evaluate_loader,
    evaluate_rank,
    parse_view_set,
    parse_view_sets,
    plan_passes,
    summarize,
)
from mmvit.data.classes import tables_of
from mmvit.eval.summary import listed_counts
from mmvit.loading import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_VIDEOS, N_IMAGES = 6, 4


MOTION = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]


def _config(data_root: str) -> dict:
    """Two tasks as a trained run's config.yaml holds them (class tables resolved, heads sized)."""
    return {
        "seed": 0,
        "tasks": {"motion": {"classes": MOTION}, "digits": {"classes": [str(d) for d in range(10)]}},
        "model": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8,
                  "tasks": {"motion": 8, "digits": 10}, "tokenizer": {"type": "central_frame", "frames": 2},
                  "pos_embed": {"type": "learned", "fractional": True, "max_len": [8, 16, 16]},
                  "head": {"type": "linear", "zero_init": False}},
        "data": {"seq_len": 64, "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "frames": 4, "num_workers": 0,
                 "resolution": 32, "video_backend": "pyav",
                 "splits": {"test": {"sources": [
                     {"type": "video_list", "list": os.path.join(data_root, "test_videos.txt"), "task": "motion"},
                     {"type": "image_list", "list": os.path.join(data_root, "test_images.txt"), "task": "digits"}]}}},
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``run/model.safetensors`` + ``run/config.yaml`` over a tiny demo dataset."""
    from safetensors.torch import save_file

    from mmvit.demo import digits as demo_data

    base = tmp_path_factory.mktemp("eval")
    demo_data.build(base / "data", seed=0, counts={"images": (0, 0, N_IMAGES), "videos": (0, 0, N_VIDEOS)},
                    shards=False)
    cfg = _config(str(base / "data"))
    torch.manual_seed(0)
    model = mmvit.build_model(cfg["model"])
    run = base / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def _settings(**kw) -> EvalSettings:
    kw.setdefault("view_sets", parse_view_sets("2x2"))
    kw.setdefault("token_budgets", [16, 48])
    kw.setdefault("kinds", ("video", "image"))
    return EvalSettings(**kw)


def test_view_sets():
    assert parse_view_set("4x3").count == 12 and parse_view_set("4x3").source_views()["full_frame"] is False
    assert parse_view_set("full").count == 1 and parse_view_set("3xfull").count == 3
    assert parse_view_set("2x3+full").count == 8 and parse_view_set("2x3+full").name == "2x3+full"
    assert [v.name for v in parse_view_sets("10x3")] == ["10x3", "full"]
    assert [v.name for v in parse_view_sets("1x3,2xfull")] == ["1x3", "2xfull"]
    assert [v.name for v in parse_view_sets("4x3", add_full=False)] == ["4x3"]
    for bad in ("4x", "x3", "0x3", "4x3,4x3", "crop"):
        with pytest.raises(ValueError):
            parse_view_sets(bad)


def test_pass_plan_and_data_config():
    from mmvit.eval.plan import pass_data_config

    data = _config("/data")["data"]
    data["splits"]["test"]["sources"].append({"type": "webdataset", "urls": "/data/shards/test-000000.tar"})
    s = _settings(token_budgets=None, resolutions=[24, 48], video_backend="decord")
    passes = plan_passes(s, data)
    assert [p.name for p in passes] == ["video/2x2/24 px", "video/2x2/48 px", "video/full/24 px", "video/full/48 px",
                                        "image/full/24 px", "image/full/48 px"]
    assert passes[1].stage() == {"resolution": {"type": "fixed", "mode": "side", "values": [48.0]}}
    video = pass_data_config(data, passes[0], s)["splits"]["test"]
    assert [src["type"] for src in video["sources"]] == ["video_list", "webdataset"]  # mixed sources stay
    assert all(src["views"] == {"temporal": 2, "spatial": 2, "full_frame": False} for src in video["sources"])
    assert video["video_backend"] == "decord" and video["persistent_workers"] is False
    image = pass_data_config(data, passes[-1], s)["splits"]["test"]
    assert [src["type"] for src in image["sources"]] == ["image_list", "webdataset"]
    # A budget above seq_len raises seq_len for that pass only; the caller's dict is untouched.
    budget = _settings(token_budgets=[16, 100])
    p100 = plan_passes(budget, data)[1]
    assert p100.stage() == {"token_budget": 100} and p100.expected_views == 4
    assert pass_data_config(data, p100, budget)["splits"]["test"]["seq_len"] == 100 and data["seq_len"] == 64
    assert pass_data_config(data, plan_passes(budget, data)[0], budget)["splits"]["test"]["seq_len"] == 64
    only_images = dict(data, splits={"test": {"sources": data["splits"]["test"]["sources"][1:2]}})
    assert [p.kind for p in plan_passes(_settings(), only_images)] == ["image", "image"]
    with pytest.raises(ValueError, match="nothing to evaluate"):
        plan_passes(_settings(kinds=("video",)), only_images)


def test_runner_pairs_each_score_with_its_metadata():
    """Packing reorders examples (longest first); scores must follow meta, not input positions."""
    model = mmvit.build_model({"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8,
                               "num_classes": 5, "head": {"type": "linear", "zero_init": False}}).eval()
    g = torch.Generator().manual_seed(0)
    sizes = [(16, 24), (40, 8), (8, 8), (32, 32), (24, 16), (8, 40)]
    samples = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    meta = [{"video_id": f"v{i // 2}", "view": i % 2, "kind": "video"} for i in range(len(samples))]
    labels = [i % 5 for i in range(len(samples))]
    batches = [mmvit.pack(samples[:4], patch_size=8, seq_len=32, labels=labels[:4], meta=meta[:4]),
               mmvit.pack(samples[4:], patch_size=8, seq_len=32, labels=labels[4:], meta=meta[4:])]
    assert batches[0].example_ids.tolist() != [0, 1, 2, 3]  # the test needs a reordering
    out = evaluate_loader(model, batches)
    assert out.throughput.examples == 6 and out.throughput.batches == 2
    assert out.throughput.tokens == sum((h // 8) * (w // 8) for h, w in sizes)
    with torch.no_grad():
        for row, (vid, view) in enumerate(zip(out.scores.video_ids, out.scores.views)):
            i = 2 * int(vid[1:]) + view
            ref = model(mmvit.pack([samples[i]], patch_size=8, seq_len=32))[0]
            torch.testing.assert_close(out.scores.logits[row], ref, atol=1e-5, rtol=1e-5)
            assert int(out.scores.labels[row]) == labels[i]


def test_two_ranks_equal_one_rank_and_count_every_video_once(run_dir):
    cfg = mmvit.load_config(str(run_dir / "config.yaml"))
    model = mmvit.build_model(cfg, weights=str(run_dir / "model.safetensors")).eval()
    settings = _settings()
    passes = plan_passes(settings, cfg["data"])
    assert [p.name for p in passes] == ["video/2x2/16 tok", "video/2x2/48 tok", "video/full/16 tok",
                                        "video/full/48 tok", "image/full/16 tok", "image/full/48 tok"]
    tables = tables_of(cfg)
    listed = listed_counts(passes, cfg["data"], settings, tables)
    assert listed == [{"motion": N_VIDEOS}] * 4 + [{"digits": N_IMAGES}] * 2

    single = evaluate_rank(model, cfg, settings, passes=passes, tables=tables)
    ranks = [evaluate_rank(model, cfg, settings, rank=r, world_size=2, passes=passes, tables=tables)
             for r in range(2)]
    for i, p in enumerate(passes):
        ids = [set(ranks[r][i].scores.video_ids) for r in range(2)]
        assert ids[0] and ids[1] and not ids[0] & ids[1], "each video (all its views) on exactly one rank"
        assert ids[0] | ids[1] == set(single[i].scores.video_ids)
        task = "motion" if p.kind == "video" else "digits"
        assert len(single[i].scores.video_ids) == listed[i][task] * p.expected_views
        assert set(single[i].kinds) == {p.kind} and set(single[i].tasks) == {task}

    one = summarize(passes, [single], settings, tables, listed)
    two = summarize(passes, ranks, settings, tables, listed)
    assert [r["name"] for r in one][:2] == ["motion/video/2x2/16 tok", "motion/video/2x2/48 tok"]
    assert {r["task"]: len(r["confusion"]) for r in one} == {"motion": 8, "digits": 10}  # each task's own classes
    for a, b in zip(one, two):
        assert a["_ids"] == b["_ids"] and len(a["_ids"]) == (N_VIDEOS if a["kind"] == "video" else N_IMAGES)
        torch.testing.assert_close(a["_scores"], b["_scores"], atol=1e-5, rtol=1e-5)
        for key in ("top1", "top5", "mean_class_acc", "confusion", "samples", "evaluated_views"):
            assert a[key] == b[key], key
        assert a["throughput"]["examples"] == b["throughput"]["examples"] == a["evaluated_views"]
        assert b["throughput"]["ranks"] == 2
        assert sum(map(sum, a["confusion"])) == a["samples"]
    # More tokens per example at the larger budget; the views differ from the full frame.
    assert one[1]["throughput"]["tokens_per_clip"] > one[0]["throughput"]["tokens_per_clip"]
    assert one[0]["evaluated_views"] == 4 * N_VIDEOS and one[2]["evaluated_views"] == N_VIDEOS

    # Sharding bugs are errors, not quietly different numbers.
    with pytest.raises(ValueError, match="evaluated twice"):
        summarize(passes[:1], [single[:1], ranks[0][:1]], settings, tables, listed[:1])
    with pytest.raises(ValueError, match="sharding lost"):
        summarize(passes[:1], [ranks[0][:1]], settings, tables, listed[:1])
    s = single[0].scores
    short = RankOutput(ViewScores(s.video_ids[1:], s.views[1:], s.labels[1:], s.logits[1:]), single[0].kinds[1:],
                       single[0].throughput, tasks=single[0].tasks[1:])
    with pytest.raises(ValueError, match="other than 4 views"):
        summarize(passes[:1], [[short]], settings, tables, listed[:1])
    # A video whose view the loader reported bad is left out with a warning instead.
    short.bad = {"corrupt": 1}
    (res,) = summarize(passes[:1], [[short]], settings, tables, listed[:1])
    assert res["samples"] == N_VIDEOS - 1 and len(res["warnings"]) == 2


def test_checkpoint_kinds_give_the_same_model(run_dir, tmp_path):
    ref = load(str(run_dir / "model.safetensors")).model.state_dict()
    assert load(str(run_dir)).model.state_dict().keys() == ref.keys()
    # A stage-0 DeepSpeed checkpoint as engine.save_checkpoint lays it out, config in the client state.
    from safetensors.torch import load_file

    tag = tmp_path / "ckpt" / "global_step7"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("global_step7")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    module = {f"module.{k}": v for k, v in load_file(str(run_dir / "model.safetensors")).items()}
    torch.save({"module": module, "config": cfg, "ds_config": {"zero_optimization": {"stage": 0}}},
               tag / "mp_rank_00_model_states.pt")
    loaded = load(str(tmp_path / "ckpt"))
    assert loaded.kind == "deepspeed"
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, ref[k])


def test_cli_writes_results_and_plots(run_dir, tmp_path, capsys):
    from mmvit.eval.cli import main

    out = tmp_path / "out"
    # The class names come from the run's class tables (its config.yaml holds them).
    results = main(["--checkpoint", str(run_dir), "--views", "1x2", "--token-budgets",
                    "16,32", "--images", "--out", str(out), "--save-predictions", "--aggregate", "mean_logit",
                    "--set", "data.batch_rows=3"])
    printed = capsys.readouterr().out
    assert "motion  video  1x2" in printed and "digits  image  full" in printed
    for name in ("results.json", "results.csv", "predictions.csv", "accuracy.png", "confusion_motion_video_1x2.png",
                 "confusion_motion_video_full.png", "confusion_digits_image_full.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["class_names"]["motion"] == MOTION and data["info"]["aggregate"] == "mean_logit"
    assert {r["task"] for r in data["results"] if r["kind"] == "video"} == {"motion"}
    assert [r["name"] for r in data["results"]] == [r["name"] for r in results]
    assert all(not k.startswith("_") for r in data["results"] for k in r)
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 and lines[0].startswith("task,kind,views")
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 4 * N_VIDEOS + 2 * N_IMAGES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_matches_one_process(run_dir, tmp_path):
    """A real 2-rank run (torchrun, gloo) gives the single-process numbers."""
    args = ["--checkpoint", str(run_dir), "--views", "1x2", "--token-budgets", "32", "--no-plots"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), os.path.join(ROOT, "tools", "eval_video.py"), *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mmvit.eval.cli import main

    one = main([*args, "--out", str(tmp_path / "one")])
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["info"]["world_size"] == 2
    for a, b in zip(one, two["results"]):
        assert b["throughput"]["ranks"] == 2
        for key in ("name", "top1", "top5", "mean_class_acc", "confusion", "samples", "evaluated_views"):
            assert a[key] == b[key], key

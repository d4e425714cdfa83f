"""Probes on frozen encoders (mmvit/eval/probe_run.py, mmvit/eval/features.py, tools/probe.py,
tools/extract_features.py): k-NN against a brute-force vote, exact class-balanced subsets, an attentive probe
that learns a task mean pooling cannot solve, both tools end to end on a tiny model and tiny data, and the
MAE reconstruction picture's arithmetic (tools/show_masked.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import mmvit
from mmvit.eval.probe_run import ProbeSettings, balanced_subset, predict_attentive, train_attentive
from mmvit.pretrain.probes import knn_predict
from mmvit.testing import media


def _brute_force_knn(train, labels, test, num_classes, k, t):
    """One test example at a time: cosine similarity to each training example, sorted, top k vote."""
    out = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, q in enumerate(test.double()):
        sims = [float(q @ x.double() / (q.norm() * x.double().norm())) for x in train]
        order = sorted(range(len(train)), key=lambda j: -sims[j])[:k]
        for j in order:
            out[i, int(labels[j])] += math.exp(sims[j] / t)
    return out


def test_knn_matches_a_brute_force_weighted_vote():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(57, 6, generator=g)
    labels = torch.randint(0, 4, (57,), generator=g)
    test = torch.randn(13, 6, generator=g)
    got = knn_predict(train, labels, test, 4, k=20, temperature=0.07, chunk_size=5)   # several chunks
    want = _brute_force_knn(train, labels, test, 4, 20, 0.07)
    assert torch.allclose(got.double(), want, rtol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_balanced_fraction_has_exact_counts_per_class_and_task():
    # task a: classes 0..3 with 40, 40, 40, 5 examples (125); task b: classes 0, 1 with 30, 10 (40).
    labels = [0] * 40 + [1] * 40 + [2] * 40 + [3] * 5 + [0] * 30 + [1] * 10
    tasks = ["a"] * 125 + ["b"] * 40
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(labels))          # interleave, so that rows are not grouped by class
    labels = [labels[i] for i in perm]
    tasks = [tasks[i] for i in perm]
    rows = balanced_subset(labels, tasks, 0.2, seed=3)
    counts: dict = {}
    for r in rows:
        counts[(tasks[r], labels[r])] = counts.get((tasks[r], labels[r]), 0) + 1
    # per class round(0.2 * n_task / classes): a -> round(6.25) = 6 (class 3 has only 5), b -> round(4.0) = 4
    assert counts == {("a", 0): 6, ("a", 1): 6, ("a", 2): 6, ("a", 3): 5, ("b", 0): 4, ("b", 1): 4}
    assert rows == sorted(set(rows))
    assert balanced_subset(labels, tasks, 0.2, seed=3) == rows
    assert balanced_subset(labels, tasks, 0.2, seed=4) != rows
    assert balanced_subset(labels, tasks, 1.0) == list(range(len(labels)))
    with pytest.raises(ValueError):
        balanced_subset(labels, tasks, 0.0)


def _needle_task(n, dim, seed):
    """Examples of 5-12 unit-noise tokens; class c has one token carrying direction ``c`` (length 5) among them.
    The mean of the tokens carries the needle at 1/12 to 1/5 of its strength."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.eye(dim)[:3] * 5.0
    tokens, labels = [], []
    for i in range(n):
        c = i % 3
        length = int(torch.randint(5, 13, (1,), generator=g))
        x = torch.randn(length, dim, generator=g)
        x[int(torch.randint(0, length, (1,), generator=g))] += dirs[c]
        tokens.append(x)
        labels.append(c)
    return tokens, torch.tensor(labels)


def test_attentive_probe_learns_a_separable_synthetic_task():
    train_tokens, train_labels = _needle_task(480, 16, seed=0)
    test_tokens, test_labels = _needle_task(90, 16, seed=1)
    probe = train_attentive(train_tokens, train_labels, 3, ProbeSettings(epochs=30, min_steps=0, lr=3e-3, seed=0))
    acc = float((predict_attentive(probe, test_tokens).argmax(1) == test_labels).float().mean())
    assert acc >= 0.9, acc
    # Reference: a linear classifier (least squares, fitted on the test set itself) on mean-pooled tokens.
    means = torch.stack([t.mean(0) for t in test_tokens])
    x = torch.cat([means, torch.ones(len(means), 1)], 1)
    w = torch.linalg.lstsq(x, torch.nn.functional.one_hot(test_labels, 3).float()).solution
    assert acc > float(((x @ w).argmax(1) == test_labels).float().mean())


# -- the tools end to end ----------------------------------------------------------------------------------------


def _write_image(path, cls, h, w, seed):
    """Class 0: the top half bright; class 1: the bottom half bright (plus noise)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    half = slice(0, h // 2) if cls == 0 else slice(h // 2, h)
    img[half] = np.clip(img[half].astype(int) + 180, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    (base / "img").mkdir()
    (base / "vid").mkdir()
    lists = {}
    for split, per_class in (("train", 8), ("test", 4)):
        lines = []
        for i in range(2 * per_class):
            h, w = [(16, 24), (24, 16), (32, 32), (16, 16)][i % 4]
            name = f"img/{split}{i:02d}.png"
            _write_image(str(base / name), i % 2, h, w, seed=100 * (split == "test") + i)
            lines.append(f"{name} {i % 2}")
        (base / f"{split}_images.txt").write_text("\n".join(lines) + "\n")
        vlines = []
        for i in range(4 if split == "train" else 2):
            name = f"vid/{split}{i}.mp4"
            media.write_video(str(base / name), frames=6, h=16, w=24)
            vlines.append(f"{name} {'ab'[i % 2]}")
        (base / f"{split}_videos.txt").write_text("\n".join(vlines) + "\n")
        lists[split] = {"sources": [{"type": "image_list", "list": str(base / f"{split}_images.txt"), "task": "shape"},
                                    {"type": "video_list", "list": str(base / f"{split}_videos.txt"),
                                     "task": "clip"}]}
    cfg = {"seed": 0, "tasks": {"shape": {"classes": ["0", "1"]}, "clip": {"classes": ["a", "b"]}},
           "model": {"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8,
                     "tasks": {"shape": 2, "clip": 2}, "tokenizer": {"type": "central_frame", "frames": 2},
                     "pos_embed": {"type": "learned", "fractional": True, "max_len": [8, 8, 8]}},
           "data": {"seq_len": 64, "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "frames": 4,
                    "resolution": 24, "num_workers": 0, "video_backend": "pyav", "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5], "splits": lists}}
    torch.manual_seed(0)
    model = mmvit.build_model(cfg)
    run = base / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return {"run": str(run), "base": base}


def test_extract_features_writes_every_sample_with_tokens(tiny, tmp_path):
    from mmvit.eval.features import read_features
    from mmvit.eval.probe_cli import extract_main

    out = tmp_path / "feats"
    extract_main(["--checkpoint", tiny["run"], "--split", "test", "--out", str(out), "--tokens",
                  "--resolution", "16"])
    index = json.loads((out / "index.json").read_text())
    assert index["examples"] == 10 and index["level"] == "16 px"
    fs = read_features(str(out))
    assert sorted(set(zip(fs.kinds, fs.tasks))) == [("image", "shape"), ("video", "clip")]
    assert sum(k == "image" for k in fs.kinds) == 8 and sum(k == "video" for k in fs.kinds) == 2
    # The pooled feature is the mean of the stored tokens, one token per patch of the example's grid.
    for f, tok, grid in zip(fs.features, fs.tokens, fs.grids):
        assert len(tok) == int(grid.prod())
        assert torch.allclose(f, tok.mean(0), atol=1e-5)
    # Independent of the tool: the model's own tokens of one test image, packed alone at its grid.
    from mmvit.packing import pack

    i = next(j for j, x in enumerate(fs.ids) if x.endswith("test03.png"))   # 16 x 16: no resize at 16 px
    img = torch.from_numpy(np.array(Image.open(tiny["base"] / "img" / "test03.png"))).permute(2, 0, 1).float()
    batch = pack([(img / 255 - 0.5) / 0.5], patch_size=(2, 8, 8), seq_len=64)   # images as 2-frame stills
    model = mmvit.load(tiny["run"]).model
    ref = model.forward_tokens(batch)[0, :4]
    assert fs.grids[i].tolist() == [1, 2, 2] and torch.allclose(fs.tokens[i], ref, atol=1e-4)
    with pytest.raises(ValueError, match="the trunk has 1 blocks"):
        extract_main(["--checkpoint", tiny["run"], "--split", "test", "--out", str(tmp_path / "x"), "--last-blocks",
                      "2"])
    # --last-blocks 2 on a 2-block encoder (a seeded random one): the two blocks' tokens side by side, the
    # second half the default features.
    feats = {}
    for k in (1, 2):
        extract_main(["--checkpoint", f"random:{tiny['run']}", "--set", "model.depth=2", "--split", "test", "--out",
                      str(tmp_path / f"r{k}"), "--tokens", "--resolution", "16", "--last-blocks", str(k)])
        feats[k] = read_features(str(tmp_path / f"r{k}"))
    d = feats[1].features.shape[1]
    assert json.loads((tmp_path / "r2" / "index.json").read_text())["dim"] == 2 * d and feats[2].ids == feats[1].ids
    assert torch.allclose(feats[2].features[:, d:], feats[1].features, atol=1e-5)
    assert all(torch.allclose(a[:, d:], b, atol=1e-5) for a, b in zip(feats[2].tokens, feats[1].tokens))
    assert not torch.allclose(feats[2].features[:, :d], feats[1].features, atol=1e-2)   # block 1 is not block 2


def test_probe_tool_rows_and_knn_agree_with_extracted_features(tiny, tmp_path):
    from mmvit.eval.features import read_features
    from mmvit.eval.probe_cli import extract_main, probe_main

    out = tmp_path / "probe"
    rows = probe_main(["--checkpoint", f"enc={tiny['run']}", "--checkpoint", f"rnd=random:{tiny['run']}",
                       "--probe", "attentive", "linear", "knn", "head", "--labels-fraction", "0.5",
                       "--resolutions", "16,24", "--epochs", "3", "--min-steps", "0", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == rows and (out / "results.md").read_text().startswith("| encoder")
    keys = {(r["encoder"], r["probe"], r["level"], r["kind"], r["task"]) for r in rows}
    want = {(e, p, lv, k, t) for e in ("enc", "rnd") for p in ("attentive", "linear", "knn")
            for lv in ("16 px", "24 px") for k, t in (("image", "shape"), ("video", "clip"))}
    # Both encoders have heads (the random one is a fresh copy of a classifier): "head" scores them untrained.
    want |= {(e, "head", lv, k, t) for e in ("enc", "rnd") for lv in ("16 px", "24 px")
             for k, t in (("image", "shape"), ("video", "clip"))}
    assert keys == want
    for r in rows:
        assert r["n"] == (8 if r["kind"] == "image" else 2) and 0.0 <= r["top1"] <= 1.0
        assert r["train_n"] == (8 if r["kind"] == "image" else 2)  # half of 16 images / 4 clips, balanced
    # The k-NN row equals k-NN on the features tools/extract_features.py writes for the same subset.
    train_dir, test_dir = tmp_path / "tr", tmp_path / "te"
    subset_cfg = yaml.safe_load(open(os.path.join(tiny["run"], "config.yaml")))
    subset_cfg["data"]["splits"]["train"]["sources"] = json.loads(json.dumps(
        [{"type": "image_list", "list": str(out / "labels_subset" / "train_0_train_images.txt"), "task": "shape",
          "root": str(tiny["base"])}]))
    cfg_path = tmp_path / "subset.yaml"
    cfg_path.write_text(yaml.safe_dump(subset_cfg))
    extract_main(["--checkpoint", tiny["run"], "--config", str(cfg_path), "--split", "train", "--out",
                  str(train_dir), "--resolution", "24", "--kinds", "image"])
    extract_main(["--checkpoint", tiny["run"], "--split", "test", "--out", str(test_dir), "--resolution", "24",
                  "--kinds", "image"])
    tr, te = read_features(str(train_dir)), read_features(str(test_dir))
    assert len(tr) == 8
    pred = knn_predict(tr.features, tr.labels, te.features, 2, k=8).argmax(1)
    top1 = float((pred == te.labels).float().mean())
    row = next(r for r in rows if (r["encoder"], r["probe"], r["level"], r["kind"]) == ("enc", "knn", "24 px", "image"))
    assert row["top1"] == pytest.approx(top1)
    # --append keeps other encoders' rows and replaces a re-run encoder's.
    probe_main(["--checkpoint", f"enc={tiny['run']}", "--probe", "knn", "--labels-fraction", "0.5",
                "--resolutions", "24", "--out", str(out), "--append"])
    merged = json.loads((out / "results.json").read_text())["rows"]
    assert {r["encoder"] for r in merged} == {"enc", "rnd"}
    assert {r["probe"] for r in merged if r["encoder"] == "enc"} == {"knn"}


def test_train_levels_all_trains_one_probe_on_every_level(tiny, tmp_path):
    """--train-levels all: the k-NN row at each level is k-NN over the training features of both levels."""
    from mmvit.eval.features import FeatureSet, read_features
    from mmvit.eval.probe_cli import extract_main, probe_main

    out = tmp_path / "probe"
    rows = probe_main(["--checkpoint", f"enc={tiny['run']}", "--probe", "knn", "attentive", "--resolutions", "16,24",
                       "--train-levels", "all", "--epochs", "2", "--min-steps", "0", "--k", "5", "--out", str(out)])
    assert {(r["probe"], r["level"], r["kind"]) for r in rows} == {
        (p, lv, k) for p in ("knn", "attentive") for lv in ("16 px", "24 px") for k in ("image", "video")}
    assert all(r["train_n"] == (32 if r["kind"] == "image" else 8) for r in rows)   # 16 images / 4 clips, x 2
    assert json.loads((out / "results.json").read_text())["runs"][0]["train_levels"] == "all"
    train = []
    for px in ("16", "24"):
        extract_main(["--checkpoint", tiny["run"], "--split", "train", "--out", str(tmp_path / f"tr{px}"),
                      "--resolution", px, "--kinds", "image"])
        train.append(read_features(str(tmp_path / f"tr{px}")))
    train = FeatureSet.concat(train)
    for px in ("16", "24"):
        extract_main(["--checkpoint", tiny["run"], "--split", "test", "--out", str(tmp_path / f"te{px}"),
                      "--resolution", px, "--kinds", "image"])
        te = read_features(str(tmp_path / f"te{px}"))
        pred = knn_predict(train.features, train.labels, te.features, 2, k=5).argmax(1)
        row = next(r for r in rows if (r["probe"], r["level"], r["kind"]) == ("knn", f"{px} px", "image"))
        assert row["top1"] == pytest.approx(float((pred == te.labels).float().mean()))


def test_train_resolutions_and_views_make_the_training_set(tiny, tmp_path):
    """--train-resolutions / --train-views: the k-NN rows at the one test level equal k-NN over the training
    features tools/extract_features.py writes at both training sizes, clips under the training view set."""
    from mmvit.eval.features import FeatureSet, read_features
    from mmvit.eval.probe_cli import extract_main, probe_main

    out = tmp_path / "probe"
    rows = probe_main(["--checkpoint", f"enc={tiny['run']}", "--probe", "knn", "--resolutions", "24",
                       "--train-resolutions", "16,20", "--train-views", "2xfull", "--train-levels", "all",
                       "--k", "5", "--out", str(out)])
    assert {(r["level"], r["kind"]) for r in rows} == {("24 px", "image"), ("24 px", "video")}
    # 16 images and 4 clips x 2 views, at 2 sizes
    assert {r["kind"]: r["train_n"] for r in rows} == {"image": 32, "video": 16}
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["train_resolutions"] == [16.0, 20.0] and run["train_views"] == "2xfull"
    for kind in ("image", "video"):
        train = []
        for px in ("16", "20"):
            d = tmp_path / f"tr{px}{kind}"
            extract_main(["--checkpoint", tiny["run"], "--split", "train", "--out", str(d), "--resolution", px,
                          "--kinds", kind, "--views", "2xfull"])
            train.append(read_features(str(d)))
        train = FeatureSet.concat(train)
        if kind == "video":   # two different clips of each 6-frame video (4 frames each)
            assert sorted(train.views) == [0] * 8 + [1] * 8 and train.ids[0] == train.ids[1]
            assert not torch.allclose(train.features[0], train.features[1], atol=1e-4)
        extract_main(["--checkpoint", tiny["run"], "--split", "test", "--out", str(tmp_path / f"te{kind}"),
                      "--resolution", "24", "--kinds", kind])
        te = read_features(str(tmp_path / f"te{kind}"))
        pred = knn_predict(train.features, train.labels, te.features, 2, k=5).argmax(1)
        row = next(r for r in rows if r["kind"] == kind)
        assert row["top1"] == pytest.approx(float((pred == te.labels).float().mean()))
    with pytest.raises(SystemExit):   # pooling several training sizes needs one probe for every level
        probe_main(["--checkpoint", tiny["run"], "--train-resolutions", "16,20", "--out", str(out)])
    with pytest.raises(SystemExit):
        probe_main(["--checkpoint", tiny["run"], "--train-views", "2xfoo", "--out", str(out)])


def test_a_fraction_of_multi_view_features_keeps_whole_examples():
    from mmvit.eval.features import FeatureSet
    from mmvit.eval.probe_run import subset_examples

    # 20 examples of 2 classes (10 each), 3 views each, sorted by (id, view) as gathered features are.
    ids = [f"x{i:02d}" for i in range(20) for _ in range(3)]
    views = [v for _ in range(20) for v in range(3)]
    labels = torch.tensor([i % 2 for i in range(20) for _ in range(3)])
    n = len(ids)
    fs = FeatureSet(ids, views, ["video"] * n, ["t"] * n, labels, torch.randn(n, 4), torch.ones(n, 3, dtype=torch.long))
    sub = subset_examples(fs, 0.4, seed=1)
    chosen = sorted(set(sub.ids))
    assert len(chosen) == 8 and len(sub) == 24                     # round(0.4 * 20 / 2) = 4 per class, all views
    assert sorted(sub.labels.tolist()) == [0] * 12 + [1] * 12
    assert all(sub.ids.count(x) == 3 for x in chosen)
    assert subset_examples(fs, 0.4, seed=1).ids == sub.ids and subset_examples(fs, 0.4, seed=2).ids != sub.ids


# -- reconstructions (tools/show_masked.py) -----------------------------------------------------------------------


def _mae(norm_pix_loss=True, per_channel=False):
    from mmvit.objectives import build_objective

    enc = mmvit.build_model({"type": "navit", "width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8,
                             "tokenizer": {"type": "central_frame", "frames": 2},
                             "pos_embed": {"type": "learned", "fractional": True, "max_len": [8, 8, 8]}})
    return build_objective({"type": "mae", "decoder": {"width": 32, "depth": 1, "heads": 2},
                            "norm_pix_loss": norm_pix_loss, "norm_pix_per_channel": per_channel}, enc).eval()


@pytest.mark.parametrize("norm_pix_loss,per_channel", [(True, False), (True, True), (False, False)])
def test_reconstruction_of_a_perfect_decoder_is_the_input(norm_pix_loss, per_channel, monkeypatch):
    """A decoder that predicts its training targets exactly (normalised patches under norm_pix_loss) gives back
    the input once un-normalised; the masked input is 0 exactly at the masked patches."""
    from mmvit.eval.reconstruct import reconstruct
    from mmvit.packing import patchify

    mae = _mae(norm_pix_loss, per_channel)
    real_predict = mae.predict

    def perfect(batch):
        pred = real_predict(batch)
        return dataclasses.replace(pred, values=mae.targets(batch, pred.slots))

    monkeypatch.setattr(mae, "predict", perfect)
    g = torch.Generator().manual_seed(0)
    # An image comes from the loader as a still clip of pt = 2 equal frames.
    samples = [torch.randn(3, 1, 16, 24, generator=g).expand(-1, 2, -1, -1), torch.randn(3, 4, 24, 16, generator=g)]
    out = reconstruct(mae, samples, ["image", "video"], seed=0)
    for x, r in zip(samples, out):
        assert torch.allclose(r.input, x) and torch.allclose(r.output, x, atol=1e-4)
        masked = (patchify(r.masked, (2, 8, 8))[0] == 0).all(1)
        assert 0 < int(masked.sum()) < len(masked)
        kept = patchify(r.masked, (2, 8, 8))[0][~masked]
        assert torch.equal(kept, patchify(x, (2, 8, 8))[0][~masked])
    # Images get the image mask (75% random), clips the video mask (90% tubes).
    assert r.kind == "video" and out[0].kind == "image"

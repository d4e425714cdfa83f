"""Pretraining through the trainer: masked batches from the loader workers (reproducible, both packings of
fixed shapes, padding on a NaViT-like resolution mix), the token-normalised loss against MAE's mean over all
masked tokens, and (slow) real DeepSpeed runs of configs/pretrain/tiny.yaml for ``mae`` and ``jepa``: a
``--resume auto`` that reproduces the uninterrupted run (ZeRO 0, 2 and 3), a universal-checkpoint resume, and the
export fine-tuned for classification through ``model.init_from``."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmvit
from mmvit.data import build_loader, resolve_data_config
from mmvit.data.packer import select_masked
from mmvit.objectives import build_objective
from mmvit.packing import first_fit_decreasing
from mmvit.pretrain import MaskConfig, pack_masked, plan_masks
from mmvit.pretrain.masking import num_masked, plan_mask
from mmvit.train.curriculum import build_curriculum
from mmvit.train.loss import example_weights, local_count, normalised_loss
from tests.conftest import free_port, launch_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "tools", "train.py")
CONFIG = os.path.join(ROOT, "configs", "pretrain", "tiny.yaml")
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")
TIMEOUT = 900
JEPA = "objective={type: jepa, predictor: {width: 16, depth: 1, heads: 2, mlp_dim: 32, attention: segments}}"


def _masked_data(cfg, objective):
    data = cfg.to_dict()["data"]
    data["mask"] = dataclasses.asdict(objective.mask)  # what the trainer hands the loader
    return data


def _tiny(*overrides):
    cfg = mmvit.load_config(CONFIG, list(overrides))
    torch.manual_seed(0)
    model = mmvit.build_model(cfg)
    return cfg, build_objective(cfg.get("objective"), model)


def _batches(data, n, seed=0, rank=0, step=4):
    cfg = resolve_data_config(data, "train")
    stage = build_curriculum({"type": "stepwise", "stages": [{"name": "full"}]}, total_steps=8, data=cfg)(step)
    loader, _ = build_loader(data, split="train", rank=rank, world_size=1, seed=seed, stage=stage, train=True)
    it = iter(loader)
    return [next(it) for _ in range(n)]


# -- the loader ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["mae", "jepa"])
def test_loader_plans_masks_reproducibly_into_both_packings(objective):
    cfg, obj = _tiny(*([JEPA] if objective == "jepa" else []))
    data = _masked_data(cfg, obj)
    batches = _batches(data, 3)
    again = _batches(data, 3)
    other = _batches(data, 1, seed=1)
    for b, c in zip(batches, again):
        assert torch.equal(b.segment_ids, c.segment_ids) and torch.equal(b.coords, c.coords)
        assert torch.equal(b.full.visible_index, c.full.visible_index) and torch.equal(b.patches, c.patches)
    assert not torch.equal(other[0].patches, batches[0].patches)
    mask = MaskConfig.from_dict(data["mask"])
    for b in batches:
        assert b.shape == (2, 48) and b.full.shape == (6, 96)
        kinds = [m["kind"] for m in b.meta]
        assert "image" in kinds and "video" in kinds
        # Every example is whole in the full packing and its visible tokens are in the parent one.
        full_len = b.full.lengths[torch.argsort(b.full.parent_index)]
        assert torch.equal(full_len, b.grid.prod(1))
        assert int((b.full.visible_index >= 0).sum()) == b.num_tokens
        for e, kind in enumerate(kinds):
            nt, nh, nw = b.grid[e].tolist()
            n, vis = nt * nh * nw, int(b.lengths[e])
            if objective == "mae" and kind == "image":
                assert vis == n - num_masked(n, 0.75)
            elif objective == "mae":  # tubes: the same spatial mask at every time step
                assert vis == nt * (nh * nw - num_masked(nh * nw, 0.9))
            else:
                assert 0 < vis < n
    assert mask.image.type == ("random" if objective == "mae" else "multiblock")


def test_masked_data_config_checks():
    cfg, obj = _tiny()
    data = _masked_data(cfg, obj)
    with pytest.raises(ValueError, match="drop_rate"):
        resolve_data_config({**data, "drop_rate": 0.5}, "train")
    with pytest.raises(ValueError, match="full_batch_rows"):
        resolve_data_config({**data, "full_batch_rows": None}, "train")
    with pytest.raises(ValueError, match="mask ratio"):
        resolve_data_config({**data, "mask": {"image": {"ratio": 1.5}}}, "train")
    # The per-example cap is the full row's: an example's tokens all go there.
    assert resolve_data_config(data, "train").token_cap == 96


def test_select_masked_fills_both_packings_oldest_first():
    rng = np.random.default_rng(0)
    cands = [(i, int(v), int(f)) for i, (v, f) in enumerate(zip(rng.integers(1, 20, 60), rng.integers(20, 90, 60)))]
    cands = [(i, min(v, f - 1), f) for i, v, f in cands]
    keys = select_masked(cands, 48, 2, 96, 6)
    chosen = [c for c in cands if c[0] in keys]
    assert keys[0] == 0  # the oldest opens the batch
    assert len(first_fit_decreasing([c[1] for c in chosen], 48)) <= 2
    assert len(first_fit_decreasing([c[2] for c in chosen], 96)) <= 6
    # Nothing left out would still fit both.
    for c in cands:
        if c[0] not in keys:
            fits_e = len(first_fit_decreasing([x[1] for x in chosen] + [c[1]], 48)) <= 2
            fits_f = len(first_fit_decreasing([x[2] for x in chosen] + [c[2]], 96)) <= 6
            assert not (fits_e and fits_f), c
    assert select_masked(cands, 48, 2, 96, 6, fixed=[(48, 90)] * 2) == []  # the encoder rows are full


@pytest.mark.parametrize("preset", ["mae", "jepa"])
def test_padding_on_a_navit_resolution_mix_under_two_percent(preset):
    """Images of NaViT's mix (side ~ U(64, 384) px, aspect 0.5-2, patch 16) with the preset's masks (MAE: 75%
    at random; JEPA: multiblock, about half visible): the stream's selection fills [8, 256] visible rows and
    the full rows to >= 98% on average over 40 batches. The full rows hold what the visible rows' share of the
    mix needs (MAE [8, 1024]; JEPA 4 rows sized from the first buffer's visible fraction): a buffer cannot make
    up for a capacity ratio that differs from the stream's. The first batch's padding is also read from the
    segment ids of its packing by pack_masked."""
    rng = np.random.default_rng(0)
    mask = MaskConfig(preset=preset)

    def draw(j):
        side, aspect = rng.uniform(64, 384), rng.uniform(0.5, 2.0)
        h = max(1, int(side * aspect ** 0.5) // 16)
        w = max(1, int(side / aspect ** 0.5) // 16)
        h, w = min(h, 32), min(w, 32)
        if h * w < 2:
            return draw(j)
        visible = plan_mask((1, h, w), "image", mask, rng)
        return (j, len(visible), h * w, (h, w, visible))

    waiting = [draw(j) for j in range(256)]
    if preset == "mae":
        full_rows, full_seq_len = 8, 1024
    else:
        share = sum(c[1] for c in waiting) / sum(c[2] for c in waiting)
        full_rows, full_seq_len = 4, int(np.ceil(8 * 256 / share / 4))
    nxt = len(waiting)
    pad_e, pad_f = [], []
    for b in range(40):
        keys = set(select_masked([c[:3] for c in waiting], 256, 8, full_seq_len, full_rows))
        chosen = [c for c in waiting if c[0] in keys]
        pad_e.append(1 - sum(c[1] for c in chosen) / (8 * 256))
        pad_f.append(1 - sum(c[2] for c in chosen) / (full_rows * full_seq_len))
        if b == 0:
            batch = pack_masked([torch.zeros(3, h * 16, w * 16) for h, w, _ in (c[3] for c in chosen)],
                                [c[3][2] for c in chosen], patch_size=16, seq_len=256, num_rows=8,
                                full_seq_len=full_seq_len, full_rows=full_rows)
            assert batch.shape == (8, 256) and batch.full.shape == (full_rows, full_seq_len)
            assert abs(float((batch.segment_ids == 0).double().mean()) - pad_e[0]) < 1e-9
            assert abs(float((batch.full.segment_ids == 0).double().mean()) - pad_f[0]) < 1e-9
        waiting = [c for c in waiting if c[0] not in keys]
        while len(waiting) < 256:
            waiting.append(draw(nxt))
            nxt += 1
    assert np.mean(pad_e) <= 0.02 and np.mean(pad_f) <= 0.02, (np.mean(pad_e), np.mean(pad_f))


def _stream(data, stop_at=None, state=None, n=6, stage_at=2):
    """Masked batches of the tiny stream through the loader's control: the stage changes (4 -> 2 frames,
    smaller sizes) after ``stage_at`` batches; ``stop_at`` returns early with the loader state."""
    import copy

    loader, control = build_loader(data, split="train", rank=0, world_size=1, seed=3, train=True)
    if state is not None:
        control.load_state_dict(copy.deepcopy(state))
    out = []
    while True:
        for b in loader:
            out.append(b)
            if control.stats()["batches"] == stage_at:
                control.set_stage({"frames": 2, "resolution": {"type": "uniform", "min": 16, "max": 32}})
            if len(out) == n or (stop_at is not None and control.stats()["batches"] == stop_at):
                return out, control.state_dict()


def test_fit_full_rows_sizes_each_stage_and_resumes_with_the_same_shapes():
    """data.fit_full_rows: within a stage every batch has one full-row length, at least full_seq_len and at
    most twice it; the stage change re-measures it; the two packings together pad less than with the fixed
    length; a loader resumed from its state gives the same batches (shapes and contents)."""
    cfg, obj = _tiny("data.full_batch_rows=4", "data.fit_full_rows=true")
    data = _masked_data(cfg, obj)
    batches, _ = _stream(data)
    by_stage: dict[int, set] = {}
    for b in batches:
        by_stage.setdefault(b.stage_id, set()).add(b.full.shape)
        assert b.shape == (2, 48)
        assert dict(b.worker_state["full_lens"])[b.stage_id] == b.full.shape[1]
    assert sorted(by_stage) == [0, 1] and all(len(v) == 1 for v in by_stage.values()), by_stage
    lengths = {k: next(iter(v))[1] for k, v in by_stage.items()}
    assert all(next(iter(v))[0] == 4 and 96 <= lengths[k] <= 192 for k, v in by_stage.items()), by_stage

    def worst_padding(bs):   # the emptier packing of each batch, from the packings' own segment ids
        return np.mean([max(float((b.segment_ids == 0).double().mean()),
                            float((b.full.segment_ids == 0).double().mean())) for b in bs])

    fixed, _ = _stream(_masked_data(*_tiny("data.full_batch_rows=4")))
    assert all(b.full.shape == (4, 96) for b in fixed)
    assert worst_padding(batches) < worst_padding(fixed), (worst_padding(batches), worst_padding(fixed))
    for stop in (1, 3):   # before the stage change (its rows are measured after the resume) and after it
        _, state = _stream(data, stop_at=stop)
        tail, _ = _stream(data, state=state, n=len(batches) - stop)   # the stage changes after batch 2 of the run
        assert [b.index for b in tail] == [b.index for b in batches[stop:]]
        for a, b in zip(batches[stop:], tail):
            assert a.full.shape == b.full.shape and torch.equal(a.full.segment_ids, b.full.segment_ids), stop
            assert torch.equal(a.patches, b.patches) and a.stage_id == b.stage_id


# -- the loss --------------------------------------------------------------------------------------------


def test_token_normalised_mae_loss_is_the_mean_over_all_masked_tokens():
    """Two micro-batches through the trainer's normalisation (loss_norm: tokens) give MAE's mean of the
    per-token errors over every masked token of the step."""
    cfg, obj = _tiny()
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(3, 8 * int(torch.randint(2, 5, (), generator=gen)), 24, generator=gen) for _ in range(5)]
    samples += [torch.randn(3, 4, 24, 16, generator=gen), torch.randn(3, 2, 32, 32, generator=gen)]
    ps = (2, 8, 8)
    vis = plan_masks(samples, ps, obj.mask, np.random.default_rng(0))
    batches = [pack_masked(samples[:4], vis[:4], patch_size=ps, seq_len=16, full_seq_len=64),
               pack_masked(samples[4:], vis[4:], patch_size=ps, seq_len=16, full_seq_len=64)]
    weights = [example_weights(b, "tokens", obj) for b in batches]
    count = local_count(weights)
    total = sum(normalised_loss(obj(b).losses, w, count) for b, w in zip(batches, weights))
    errors = []
    for b in batches:
        pred = obj.predict(b)
        errors.append((pred.values - obj.targets(b, pred.slots)).square().mean(-1))
    ref = torch.cat(errors).mean()
    assert count == sum(int(np.prod(s.shape[1:]) // 64 // (1 if s.dim() == 3 else 2)) - len(v)
                        for s, v in zip(samples, vis))
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-6)


# -- real runs (slow) ------------------------------------------------------------------------------------




def _run(cmd, timeout=TIMEOUT):
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}"
    return proc


def _train(run_dir, *overrides, ranks=2, resume=None, config=CONFIG):
    launch = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port())] if ranks == 2 else [sys.executable]
    cmd = [*launch, TRAIN, "--config", config, "--set", f"run_dir={run_dir}", "train.progress=false", *overrides]
    return _run(cmd + (["--resume", resume] if resume else []))


def _records(run_dir, kind="train"):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.slow
@pytest.mark.parametrize("objective,stage", [("mae", 0), ("mae", 2), ("jepa", 3)])
def test_resume_auto_reproduces_the_uninterrupted_run(tmp_path, objective, stage):
    over = [f"deepspeed.zero_optimization.stage={stage}", *([JEPA] if objective == "jepa" else [])]
    ref = str(tmp_path / "ref")
    _train(ref, *over)
    train = _records(ref)
    assert [r["step"] for r in train] == list(range(6))
    assert all(r["loss"] == r["loss"] and r["videos"] > 0 and r["images"] > 0 for r in train)
    assert all(0.0 <= r["full_padding"] < 0.6 and 0.3 < r["train_masked_fraction"] < 1.0 for r in train)
    # The run after its step-3 checkpoint, as if it had stopped there.
    run = str(tmp_path / "run")
    shutil.copytree(ref, run)
    shutil.rmtree(os.path.join(run, "checkpoints", "global_step6"))
    for name in ("model.safetensors", "config.yaml"):
        os.remove(os.path.join(run, name))
    with open(os.path.join(run, "metrics.jsonl")) as f:
        kept = [line for line in f if json.loads(line)["step"] < 3]
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    proc = _train(run, *over, resume="auto")
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    got = {r["step"]: r["loss"] for r in _records(run)}
    for r in train[3:]:
        assert got[r["step"]] == pytest.approx(r["loss"], rel=1e-5, abs=1e-6), r["step"]
    # The export (MAE: the encoder; JEPA: the target encoder, which the resume restored) is the same.
    a, b = _weights(os.path.join(ref, "model.safetensors")), _weights(os.path.join(run, "model.safetensors"))
    assert a.keys() == set(mmvit.build_model(mmvit.load_config(CONFIG)).state_dict())
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # tools/export.py reads the checkpoint of the whole objective and writes the same plain model.
    from mmvit.export import export

    c = _weights(export(os.path.join(ref, "checkpoints", "global_step6"), str(tmp_path / "exp")).weights)
    for k in a:
        assert torch.equal(c[k], a[k]), k
    if objective == "jepa":  # the target encoder moved away from its initial copy, towards the encoder
        torch.manual_seed(0)  # the trainer's seed: the initial weights
        init = mmvit.build_model(mmvit.load_config(CONFIG))
        assert any(not torch.allclose(a[k], v) for k, v in init.state_dict().items() if not k.startswith("pool."))
        # --online: the context encoder, as the optimizer's fp32 master weights hold it, not the target's EMA.
        from mmvit import checkpoint as ckpt

        online = _weights(export(os.path.join(ref, "checkpoints", "global_step6"), str(tmp_path / "online"),
                                 online=True).weights)
        masters, _, _ = ckpt.consolidate(os.path.join(ref, "checkpoints"), "global_step6")
        masters = {k.removeprefix("module.").removeprefix("model."): v for k, v in masters.items()
                   if k.removeprefix("module.").startswith("model.")}
        assert online.keys() == a.keys() and masters and set(masters) <= set(online)
        for k, v in masters.items():
            assert torch.equal(online[k], v.float()), k
        assert any(not torch.allclose(online[k], a[k]) for k in masters)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_jepa_universal_checkpoint_resumes_target_encoder(tmp_path, stage):
    """A 2-rank ZeRO-1 or ZeRO-3 JEPA checkpoint converted by ds_to_universal resumes on one rank (same stage)
    with its target encoder (a frozen submodule, which the universal optimizer state does not hold; under
    ZeRO-3 the module state holds only placeholders of it, the client state its whole values)."""
    zero = f"deepspeed.zero_optimization.stage={stage}"
    ref = str(tmp_path / "ref")
    _train(ref, JEPA, "train.steps=3", zero)
    src = os.path.join(ref, "checkpoints", "global_step3")
    uni = str(tmp_path / "uni")
    _run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", src, "--output_folder",
          uni, "--num_extract_workers", "1", "--num_merge_workers", "1"], 300)
    at = str(tmp_path / "at")
    _train(at, JEPA, "train.steps=3", zero, ranks=1, resume=uni)  # loads, trains nothing, exports
    a, b = _weights(os.path.join(ref, "model.safetensors")), _weights(os.path.join(at, "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_export_fine_tunes_for_classification_through_init_from(tmp_path):
    """One process: MAE pretraining, then configs/tests/tiny_train.yaml (classification, 10 classes) with
    model.init_from the export: the encoder's weights arrive, the head is new, and training runs."""
    pre = str(tmp_path / "pre")
    _train(pre, "train.steps=2", "model.pool=mean", ranks=1)
    export = os.path.join(pre, "model.safetensors")
    weights = _weights(export)
    tiny = os.path.join(ROOT, "configs", "tests", "tiny_train.yaml")
    init = f"model.init_from={{path: {export}, format: mmvit}}"
    cfg = mmvit.load_config(tiny, [init, "model.pool=mean"])
    from mmvit.pretrained import apply_init_from

    model = mmvit.build_model(cfg)
    report = apply_init_from(model)
    state = model.state_dict()
    for k, v in weights.items():
        assert torch.equal(state[k], v), k
    assert any(k.startswith("head.") for k in state) and not any(k.startswith("head.") for k in weights)
    assert report is not None
    ft = str(tmp_path / "ft")
    proc = _train(ft, init, "model.pool=mean", "train.steps=2", "eval.every=0", "eval.at_end=false",
                  "train.ema_decay=null", "train.faults.nan_steps=[]", ranks=1, config=tiny)
    assert "init_from" in proc.stdout or "loaded" in proc.stdout
    assert all(r["loss"] == r["loss"] for r in _records(ft))

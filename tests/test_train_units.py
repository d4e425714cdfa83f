"""Trainer pieces without DeepSpeed processes: schedule, loss normalisation, the synthetic source, checkpoint
markers, RNG states, EMA, the run log, DeepSpeed config checks."""

import glob
import json
import os

import pytest
import torch

import mmvit
from mmvit import checkpoint as ckpt
from mmvit.data import build_loader
from mmvit.objectives.classification import example_losses
from mmvit.train import rng
from mmvit.train.config import parse
from mmvit.train.curriculum import build_curriculum
from mmvit.train.ema import EMA
from mmvit.train.engine import build_ds_config, param_groups
from mmvit.train.loss import example_weights, local_count, normalised_loss
from mmvit.train.runlog import RunLog
from mmvit.train.schedule import lr_factor, stage_lr_scale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tests", "tiny_train.yaml")
DATA = {"sources": [{"type": "synthetic", "num_samples": 64, "num_classes": 5, "frames": [4, 6]}], "seq_len": 32,
        "batch_rows": 2, "patch_sizes": [8], "tubelet": 2, "resolution": {"type": "uniform", "min": 16, "max": 40},
        "frames": 4, "num_workers": 0}


def test_lr_warmup_cosine_and_stage_scaling():
    kw = {"total_steps": 110, "warmup_steps": 10, "min_lr_ratio": 0.1}
    assert lr_factor(0, **kw) == pytest.approx(0.1)        # step 0 already learns
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.55)      # half-way down the cosine
    assert lr_factor(110, **kw) == pytest.approx(0.1)
    assert lr_factor(50, total_steps=100, schedule="constant") == 1.0
    assert stage_lr_scale(0.25, "linear") == 4.0 and stage_lr_scale(0.25, "sqrt") == 2.0
    assert stage_lr_scale(0.25, "none") == 1.0


@pytest.mark.parametrize("mode", ["examples", "tokens"])
def test_global_mean_loss_does_not_depend_on_how_examples_are_split(mode):
    """The summed micro-batch losses equal the mean over all examples (weighted by tokens), and so does the
    gradient, however the examples are spread over micro-batches (a per-micro-batch mean would not)."""
    model = mmvit.build_model({"width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "patch_size": 8, "num_classes": 5,
                               "head": {"type": "linear", "zero_init": False}})
    torch.manual_seed(1)
    samples = [torch.randn(3, 8 * h, 8 * w) for h, w in [(1, 1), (2, 3), (4, 4), (1, 2), (3, 3), (2, 2), (4, 1)]]
    labels = torch.randint(0, 5, (len(samples),))

    def grads(splits):
        model.zero_grad()
        batches = [mmvit.pack([samples[i] for i in s], patch_size=8, seq_len=16, labels=labels[s]) for s in splits]
        count = local_count([example_weights(b, mode) for b in batches])
        total = sum(normalised_loss(example_losses(model(b), b.labels), example_weights(b, mode), count)
                    for b in batches)
        total.backward()
        return total.detach(), [p.grad.clone() for p in model.parameters()]

    one_loss, one = grads([list(range(7))])
    many_loss, many = grads([[0], [1, 2, 3], [4, 5, 6]])
    assert torch.allclose(one_loss, many_loss, atol=1e-6)
    for a, b in zip(one, many):
        assert torch.allclose(a, b, atol=1e-6)


def test_synthetic_source_through_the_loader_is_deterministic_and_follows_stages():
    """The synthetic source is read by the real loader: same seed, same batches; images and clips share
    packs; a stage change reaches the next batch; an evaluation pass gives every item once."""
    def batches(n, **kw):
        loader, control = build_loader(DATA, split="train", rank=0, world_size=1, seed=3, train=True, **kw)
        it = iter(loader)
        return [next(it) for _ in range(n)], control, it

    first, control, it = batches(4)
    again, _, _ = batches(4)
    assert all(torch.equal(a.patches, b.patches) and torch.equal(a.labels, b.labels) for a, b in zip(first, again))
    assert all(b.shape == (2, 32) for b in first)
    assert {m["kind"] for b in first for m in b.meta} == {"image", "video"}  # images and clips share packs
    source = mmvit.DATASETS.build(DATA["sources"][0])
    meta = first[0].meta[0]
    item = source.item(int(meta["id"]))
    assert meta["label"] == item.label and meta["orig_size"] == [item.info["height"], item.info["width"]]
    control.set_stage({"resolution": {"type": "fixed", "values": [8]}, "frames": 2})
    small = [next(it) for _ in range(3)][-1]
    assert small.grid[:, 1:].max() == 1 and small.num_examples > first[0].num_examples
    with pytest.raises(KeyError, match="did you mean 'resolution'"):
        control.set_stage({"resolutoin": 8})
    assert control.stats()["bad_total"] == 0
    val, _ = build_loader(DATA, split="val", rank=0, world_size=1, seed=3, train=False)
    ids = [m["id"] for b in val for m in b.meta]
    assert sorted(ids, key=int) == [str(i) for i in range(64)]  # one exact pass, every item once


def test_checkpoint_markers_newest_complete_and_prune(tmp_path):
    d = tmp_path / "checkpoints"
    for step in (3, 6, 9):
        (d / ckpt.tag_for(step)).mkdir(parents=True)
    ckpt.mark_complete(str(d / "global_step3"), {"step": 3})
    ckpt.mark_complete(str(d / "global_step6"), {"step": 6})
    # global_step9 has no marker: a save interrupted by kill -9 is never resumed from.
    assert ckpt.newest_complete(str(d)) == str(d / "global_step6")
    assert ckpt.resolve_resume("auto", str(d)) == str(d / "global_step6")
    assert ckpt.resolve_resume("auto", str(tmp_path / "none")) is None
    assert ckpt.resolve_resume(None, str(d)) is None
    (d / "global_step4").mkdir()  # incomplete and older than the newest complete one: a leftover
    ckpt.prune(str(d), keep=1)
    assert sorted(os.listdir(d)) == ["global_step6", "global_step9"]
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_resume(str(tmp_path / "missing"), str(d))


def test_rng_state_roundtrip_and_rank_pick():
    rng.seed_all(5)
    state = rng.rng_state()
    a = torch.rand(3)
    rng.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    assert rng.pick_rank_state([1, 2], 1, 2) == (2, True)
    assert rng.pick_rank_state([1, 2], 0, 1) == (1, False)


def test_ema_update_swap_and_state():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.5, warmup=False)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], w0 + 1.0)
    ema.swap(m)
    assert torch.allclose(m.weight, w0 + 1.0)
    ema.swap(m)
    assert torch.allclose(m.weight, w0 + 2.0)
    other = EMA(m, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_metrics_resume_drops_records_to_be_redone(tmp_path):
    log = RunLog(str(tmp_path), rank=0, start_step=0, total_steps=4, progress=False)
    for s in range(4):
        log.record("train", s, loss=1.0 / (s + 1))
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line cut by kill -9
    log = RunLog(str(tmp_path), rank=0, start_step=2, total_steps=4, progress=False, fresh=False)
    log.record("train", 2, loss=0.5)
    log.close()
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [0, 1, 2]
    assert os.path.isdir(tmp_path / "tb")


def test_deepspeed_config_checks():
    cfg = mmvit.load_config(TINY)
    train, _, _ = parse(cfg)
    ds = build_ds_config(cfg["deepspeed"], train)
    assert ds["optimizer"]["params"]["lr"] == train.lr and ds["optimizer"]["params"]["torch_adam"]
    with pytest.raises(KeyError, match="gradient_clipping"):
        build_ds_config({"train_batch_size": 1}, train)
    with pytest.raises(KeyError, match="scheduler"):
        build_ds_config({"gradient_clipping": 1.0, "scheduler": {"type": "WarmupLR"}}, train)
    with pytest.raises(ValueError, match="train.lr"):
        build_ds_config({"gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": {"lr": 1.0}}}, train)
    with pytest.raises(ValueError, match="micro"):
        build_ds_config({"gradient_clipping": 1.0, "train_micro_batch_size_per_gpu": 8}, train)
    with pytest.raises(KeyError, match="did you mean 'warmup_steps'"):
        parse({"train": {"warmup_step": 3}})
    with pytest.raises(KeyError, match="did you mean 'nan_steps'"):
        parse({"train": {"faults": {"nan_step": [1]}}})


def test_no_weight_decay_groups():
    """Norm weights, position embeddings, the class token and the MAP probe (found here by module type and
    name, independently of no_weight_decay) go without weight decay; every matrix with it."""
    model = mmvit.build_model({**mmvit.load_config(TINY)["model"], "pool": "cls", "fc_norm": True, "bias": True})
    expected = {"cls_token"} | {f"{m}.{p}" for m, mod in model.named_modules()
                                if isinstance(mod, torch.nn.LayerNorm) for p, _ in mod.named_parameters()}
    expected |= {n for n, _ in model.named_parameters() if n.startswith("pos_embed.") or n.endswith(".bias")}
    assert {"norm.weight", "blocks.0.attn.q_norm.weight", "fc_norm.weight", "head.fc.bias"} <= expected
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == expected
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - expected
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    mapped = mmvit.build_model({**mmvit.load_config(TINY)["model"], "pool": "map"})
    _, no_decay = param_groups(mapped, 0.05)
    assert "pool.probe" in {n for n, p in mapped.named_parameters() if any(p is q for q in no_decay["params"])}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "train", "*.yaml"))) + [TINY])
def test_training_configs_parse(path):
    """Every shipped training config: typed sections, DeepSpeed checks, curriculum, data keys, model."""
    with open(path) as f:
        assert f.readline().startswith("# "), "a config starts with the command that runs it"
    cfg = mmvit.load_config(path, ["model.depth=1"])
    train, _, _ = parse(cfg)
    build_ds_config(cfg["deepspeed"], train)
    from mmvit.data.config import resolve_data_config

    data = cfg.to_dict()["data"]
    for split in ("train", "val"):
        resolve_data_config(data, split)
    curriculum = build_curriculum(cfg.get("curriculum"), total_steps=train.steps, data=resolve_data_config(data, "train"))
    assert 0 < curriculum(0).cost <= 1.0 and curriculum(train.steps - 1).cost == pytest.approx(1.0)
    from mmvit.models.build import build_model

    build_model(cfg, device="meta")

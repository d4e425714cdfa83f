"""Every shipped model config builds and runs on a small packed batch."""

import glob

import pytest
import torch

import mmvit


@pytest.mark.parametrize("path", sorted(glob.glob("configs/models/*.yaml")))
def test_model_config_builds(path):
    cfg = mmvit.load_config(path, ["model.depth=1"])
    model = mmvit.build_model(cfg).eval()
    pt = cfg.model.tokenizer.get("frames", 1)
    batch = mmvit.pack([torch.randn(3, 64, 48), torch.randn(3, 4, 32, 64)], patch_size=(pt, 16, 16), seq_len=32)
    assert model(batch).shape == (2, cfg.model.num_classes)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "fourier", "grid2d"])
def test_builds_on_meta_device(pos):
    """Layers take device/dtype, so big models can be built without memory (e.g. under ZeRO-3)."""
    from mmvit.models.build import build_model

    model = build_model({"variant": "L/16", "num_classes": 10, "pos_embed": {"type": pos},
                         "tokenizer": {"type": "central_frame"}}, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*/*.yaml")))
def test_every_shipped_config_type_checks(path):
    """Each section of every shipped config passes its typed config (a stale key or value fails here, not
    hours into a run): train/eval/export, every split's data, the curriculum, the objective and the model."""
    from mmvit.data import resolve_data_config
    from mmvit.data.config import DataConfig
    from mmvit.objectives import build_objective
    from mmvit.train.config import parse
    from mmvit.train.curriculum import build_curriculum

    cfg = mmvit.load_config(path).to_dict()
    train, _, _ = parse(cfg)
    splits = {}
    if cfg.get("data"):
        for split in (cfg["data"].get("splits") or {"train": {}}):
            splits[split] = resolve_data_config(cfg["data"], split)
            assert isinstance(splits[split], DataConfig)
    if cfg.get("curriculum") and "train" in splits:
        build_curriculum(cfg["curriculum"], total_steps=train.steps, data=splits["train"])
    model_cfg = dict(cfg["model"])
    model_cfg.pop("init_from", None)  # weights not on disk here
    supervised = (cfg.get("objective") or {}).get("type", "classification") == "classification"
    if cfg.get("tasks") and supervised:  # heads sized by the class tables; pretraining encoders have none
        model_cfg.pop("num_classes", None)
        model_cfg["tasks"] = {t: spec.get("num_classes") or len(spec["classes"]) for t, spec in cfg["tasks"].items()}
    from mmvit.models.build import build_model

    model = build_model(model_cfg, device="meta")
    if cfg.get("objective"):
        build_objective(cfg["objective"], model)

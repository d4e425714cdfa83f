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

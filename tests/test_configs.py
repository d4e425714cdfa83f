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

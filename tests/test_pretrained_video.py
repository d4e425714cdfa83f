"""An image checkpoint in a video model (ViViT inflation) and at other patch sizes (FlexiViT PI-resize)."""

import os

import pytest
import torch
import torch.nn.functional as F

import mmvit
from mmvit.packing import patchify
from mmvit.pretrained import load_pretrained, timm_vit_config
from tests.test_pretrained import TINY, build_init, features, save
from tests.test_pretrained_reference import reference_vit, timm_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TOKENIZERS = {"central_frame": {"type": "central_frame", "frames": 2},
              "tubelet-inflate": {"type": "tubelet", "frames": 3, "init": "inflate"},
              "patch2d": {"type": "patch2d"}}


@pytest.mark.parametrize("pool", ["cls", "map"])
@pytest.mark.parametrize("tok", list(TOKENIZERS))
def test_still_clip_gets_the_image_features_at_step_0(tmp_path, tok, pool):
    """Inflated kernel, spatial grid shared over time, temporal table at zero: a clip of identical frames
    embeds like its image. With a class token that holds for one tubelet in time (``t`` frames); without
    one (MAP) for any length, since attention over repeated tokens is attention over the originals."""
    tok = TOKENIZERS[tok]
    state = timm_state(global_pool="map", class_token=False) if pool == "map" else timm_state()
    model = mmvit.build_model(timm_vit_config("S/8", num_classes=7, img_size=32, tokenizer=tok, pool=pool, **TINY))
    report = load_pretrained(model.eval(), save(state, tmp_path / "vit.safetensors"))
    t = tok.get("frames", 1)
    if t > 1:
        assert report.resampled == ["tokenizer.weight"]
        assert f"inflated over {t} frames ({tok.get('init', 'central_frame')})" in report.notes["tokenizer.weight"]
    assert "pos_embed.temporal" in report.initialised and model.pos_embed.temporal.abs().max() == 0

    img_a, img_b = torch.randn(3, 24, 40), torch.randn(3, 32, 32)
    frames = 3 * t if pool == "map" else t
    clip_a = img_a[:, None].expand(-1, frames, -1, -1)       # C x T x H x W, identical frames
    clip_b = img_b[:, None].expand(-1, frames, -1, -1)
    # images and clips in one batch; images are repeated to t frames by pack
    batch = mmvit.pack([clip_a, img_a, clip_b], patch_size=(t, 8, 8), seq_len=16 * frames // t)
    with torch.no_grad():
        out = model.forward_features(batch)[torch.argsort(batch.example_ids)]
    gp = "map" if pool == "map" else "token"
    ref_a = reference_vit(state, img_a, heads=3, grid=(4, 4), global_pool=gp)
    ref_b = reference_vit(state, img_b, heads=3, grid=(4, 4), global_pool=gp)
    for got, ref in zip(out, (ref_a, ref_a, ref_b)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_shipped_video_config(tmp_path):
    """configs/pretrained/vit_s16_timm_video.yaml (full S/16, central_frame) on a still clip."""
    state = timm_state(width=384, depth=12, heads=6, patch=16, grid=(14, 14), num_classes=1000)
    path = save(state, tmp_path / "vit_small_patch16_224.safetensors")
    cfg = mmvit.load_config(os.path.join(ROOT, "configs/pretrained/vit_s16_timm_video.yaml"),
                            [f"model.init_from.path={path}"])
    model = build_init(cfg).eval()
    heads = {t: h.fc.weight for t, h in model.task_heads.items()}
    assert {t: tuple(w.shape) for t, w in heads.items()} == {"digits": (10, 384), "motion": (8, 384)}
    assert all(w.abs().max() == 0 for w in heads.values())
    img = torch.randn(3, 96, 160)
    clip = img[:, None].expand(-1, 2, -1, -1)
    got = features(model, [clip], patch_size=(2, 16, 16))[0]
    torch.testing.assert_close(got, reference_vit(state, img, heads=6, grid=(14, 14)), rtol=1e-4, atol=1e-4)


def test_flexivit_any_patch_size(tmp_path):
    state = timm_state()  # patch 8
    model = build_init(timm_vit_config("S/8", img_size=32, weights=save(state, tmp_path / "v.pth"), **TINY))
    model.eval()
    smooth = F.interpolate(torch.randn(1, 3, 8, 12), size=(32, 48), mode="bicubic", align_corners=False)[0]
    for p in (4, 16, 32):
        out = features(model, [smooth], patch_size=p)
        assert out.shape == (1, 48) and torch.isfinite(out).all()

    # PI-resize: each patch resized to 16x16 with the kernel embeds exactly as at 8x8 ...
    patches, _ = patchify(smooth[:, None], (1, 8, 8))
    resized = F.interpolate(patches.view(-1, 3, 8, 8), size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tok8 = model.tokenizer(patches, (1, 8, 8))
        torch.testing.assert_close(model.tokenizer(resized.flatten(1), (1, 16, 16)), tok8, rtol=1e-5, atol=1e-5)
    # ... and the whole image resized by the patch ratio nearly so (a whole-image resize mixes neighbouring
    # patches at their borders); the grid is the same, so are the position embeddings.
    big = F.interpolate(smooth[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        tok16 = model.tokenizer(patchify(big[:, None], (1, 16, 16))[0], (1, 16, 16))
    assert (tok16 - tok8).norm() / tok8.norm() < 0.1
    f8, f16 = features(model, [smooth], patch_size=8), features(model, [big], patch_size=16)
    assert (f16 - f8).norm() / f8.norm() < 0.05


def test_checkpoint_patch_size_differs_from_the_model(tmp_path):
    state = timm_state(patch=16, grid=(2, 2))
    model = mmvit.build_model(timm_vit_config("S/8", img_size=32, **TINY))
    report = load_pretrained(model, save(state, tmp_path / "v.safetensors"), grid_size=(2, 2))
    assert set(report.resampled) == {"tokenizer.weight", "pos_embed.grid"}
    assert "PI-resized 16x16 -> 8x8" in report.notes["tokenizer.weight"]

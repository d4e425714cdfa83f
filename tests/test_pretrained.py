"""Importing timm ViT checkpoints: parity with an independent timm-semantics reference, and the report."""

import logging
import os

import pytest
import torch
from safetensors.torch import save_file

import mmvit
from mmvit.pretrained import apply_init_from, load_pretrained, timm_vit_config
from tests.test_pretrained_reference import reference_vit, timm_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"width": 48, "depth": 2, "heads": 3, "mlp_dim": 192}  # timm_state's defaults: patch 8, grid 4x4
SIZES = [(32, 32), (24, 40), (48, 48), (8, 16), (40, 16)]      # native 4x4 grid first, then resampled ones


def save(state, path):
    path = str(path)
    save_file(state, path) if path.endswith(".safetensors") else torch.save(state, path)
    return path


def build_init(cfg):
    """A model as the trainer builds it: mmvit.build_model only builds; init_from is applied after."""
    model = mmvit.build_model(cfg)
    apply_init_from(model)
    return model


def build_timm_model(path, pool="cls", img_size=32, **overrides):
    cfg = timm_vit_config("S/8", num_classes=7, img_size=img_size, pool=pool, weights=path, **{**TINY, **overrides})
    return build_init(cfg).eval()


def features(model, images, patch_size=8):
    pt, ph, pw = (1, patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    seq = max((img.shape[-2] // ph) * (img.shape[-1] // pw) * max(1, img.shape[1] // pt if img.dim() == 4 else 1)
              for img in images)
    batch = mmvit.pack(images, patch_size=patch_size, seq_len=seq)
    with torch.no_grad():
        out = model.forward_features(batch)
    return out[torch.argsort(batch.example_ids)]


CASES = {
    "vit": {},
    "no_qkv_bias": {"qkv_bias": False},
    "layer_scale": {"layer_scale": True},
    "no_embed_class": {"no_embed_class": True},
    "map_no_cls": {"global_pool": "map", "class_token": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_timm_reference_at_every_resolution(tmp_path, case):
    kw = CASES[case]
    state = timm_state(**kw)
    pool = "map" if kw.get("global_pool") == "map" else "cls"
    model = build_timm_model(save(state, tmp_path / "vit.safetensors"), pool=pool)
    images = [torch.randn(3, h, w) for h, w in SIZES]
    out = features(model, images)  # all sizes packed together
    for img, got in zip(images, out):
        ref = reference_vit(state, img, heads=3, grid=(4, 4), global_pool=kw.get("global_pool", "token"))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_reference(tmp_path):
    """Fine-tuning starts from the same function: gradients agree too (resampled grid included)."""
    state = {k: v.clone().requires_grad_() for k, v in timm_state().items()}
    model = build_timm_model(save({k: v.detach() for k, v in state.items()}, tmp_path / "vit.safetensors"))
    img = torch.randn(3, 24, 40)
    model.forward_features(mmvit.pack([img], patch_size=8, seq_len=15)).square().sum().backward()
    reference_vit(state, img, heads=3, grid=(4, 4)).square().sum().backward()
    pairs = {"tokenizer.weight": state["patch_embed.proj.weight"].grad[:, :, None],
             "cls_token": state["cls_token"].grad.reshape(-1),
             "pos_embed.grid": state["pos_embed"].grad[0, 1:].reshape(4, 4, -1),
             "blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"].grad,
             "blocks.1.mlp.fc2.bias": state["blocks.1.mlp.fc2.bias"].grad,
             "norm.weight": state["norm.weight"].grad}
    params = dict(model.named_parameters())
    for name, ref in pairs.items():
        torch.testing.assert_close(params[name].grad, ref, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(state["pos_embed"].grad[0, 0], state["cls_token"].grad.reshape(-1))


def test_interpolation_is_configurable_and_matters(tmp_path):
    state = timm_state()
    path = save(state, tmp_path / "vit.pth")
    img = torch.randn(3, 24, 40)
    bicubic = reference_vit(state, img, heads=3, grid=(4, 4), interpolation="bicubic")
    bilinear = reference_vit(state, img, heads=3, grid=(4, 4), interpolation="bilinear")
    assert (bicubic - bilinear).abs().max() > 1e-3  # the test can tell them apart
    got = features(build_timm_model(path, pos_embed={"mode": "bilinear"}), [img])[0]
    torch.testing.assert_close(got, bilinear, rtol=1e-5, atol=1e-5)


def test_report_of_the_matching_trunk(tmp_path):
    state = timm_state()
    model = build_timm_model(None)
    report = load_pretrained(model, save(state, tmp_path / "vit.safetensors"))
    assert report.ignored == [] and report.initialised == ["pos_embed.temporal"] and report.resampled == []
    assert sorted(report.loaded) == sorted(k for k in model.state_dict() if k != "pos_embed.temporal")
    assert report.sources["cls_token"] == ["cls_token", "pos_embed"] and "pos_embed[:, 0]" in report.notes["cls_token"]
    assert torch.equal(model.pos_embed.temporal, torch.zeros_like(model.pos_embed.temporal))
    torch.testing.assert_close(model.tokenizer.weight[:, :, 0], state["patch_embed.proj.weight"])


def test_no_qkv_bias_sets_zero_and_reports(tmp_path):
    model = build_timm_model(None)
    torch.nn.init.normal_(model.blocks[0].attn.qkv.bias)
    report = load_pretrained(model, save(timm_state(qkv_bias=False), tmp_path / "vit.pth"))
    assert "blocks.0.attn.qkv.bias" in report.initialised
    assert "zero" in report.notes["blocks.0.attn.qkv.bias"]
    assert model.blocks[0].attn.qkv.bias.abs().max() == 0


def test_navit_trunk_takes_what_fits_and_reports_every_key(tmp_path, caplog):
    """NaViT defaults (qk-norm, MAP, factorized learned positions, no biases) from a timm ViT."""
    state = timm_state(num_classes=7)
    model = mmvit.build_model({"variant": "S/8", **TINY, "num_classes": 7}).eval()
    with caplog.at_level(logging.INFO, logger="mmvit.pretrained"):
        report = mmvit.load_pretrained(model, save(state, tmp_path / "vit.safetensors"), format="timm")
    model_keys = list(model.state_dict())
    # every model key in exactly one list, every checkpoint key used or ignored
    lists = report.loaded + report.resampled + report.initialised
    assert sorted(lists) == sorted(model_keys)
    used = {s for srcs in report.sources.values() for s in srcs}
    assert used.isdisjoint(report.ignored) and used | set(report.ignored) == set(state)
    assert set(report.reasons) == set(report.ignored)

    per_block = ["norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight", "mlp.fc1.weight",
                 "mlp.fc2.weight"]
    expect_loaded = {"tokenizer.weight", "norm.weight", "head.fc.weight", "head.fc.bias"}
    expect_loaded |= {f"blocks.{i}.{k}" for i in range(2) for k in per_block}
    assert set(report.loaded) == expect_loaded
    assert set(report.initialised) == {k for k in model_keys if k.startswith(("pos_embed.", "pool."))
                                       or "q_norm" in k or "k_norm" in k}
    assert set(report.ignored) == {k for k in state if k.endswith(".bias") and k != "head.bias"} | {
        "cls_token", "pos_embed"}
    assert "bias: false" in report.reasons["blocks.1.attn.qkv.bias"]
    assert "pool: map" in report.reasons["cls_token"] and "'learned'" in report.reasons["pos_embed"]
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    assert "ignored: blocks.*.attn.qkv.bias x2" in caplog.text


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = save(timm_state(), tmp_path / "vit.safetensors")
    model = mmvit.build_model(timm_vit_config("S/8", img_size=32, width=48, depth=2, heads=3, mlp_dim=96))
    before = model.blocks[0].mlp.fc1.weight.clone()
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight.*\(192, 48\).*\(96, 48\)"):
        load_pretrained(model, path)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, before)  # nothing loaded on failure
    report = load_pretrained(model, path, strict_shapes=False)
    assert "blocks.0.mlp.fc1.weight" in report.initialised and "blocks.0.mlp.fc1.weight" in report.ignored
    assert "(192, 48)" in report.reasons["blocks.0.mlp.fc1.weight"]


def test_head_of_another_size_and_surplus_blocks(tmp_path):
    path = save(timm_state(depth=3, num_classes=1000), tmp_path / "vit.pth")
    model = mmvit.build_model(timm_vit_config("S/8", num_classes=18, img_size=32, **TINY))
    report = load_pretrained(model, path)
    assert {"head.fc.weight", "head.fc.bias"} <= set(report.initialised)
    assert "(1000, 48)" in report.reasons["head.weight"] and "(18, 48)" in report.reasons["head.weight"]
    assert model.head.fc.weight.abs().max() == 0  # zero-init head kept
    block2 = {k for k in timm_state(depth=3) if k.startswith("blocks.2.")}
    assert {k for k in report.ignored if k.startswith("blocks.2.")} == block2
    assert report.reasons["blocks.2.norm1.weight"] == "the model has 2 blocks"


def test_checkpoint_containers_and_grid_resampled_at_load(tmp_path):
    """A training checkpoint ({'state_dict': ...}, 'module.' keys) into a model with another grid."""
    state = timm_state()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    model = mmvit.build_model(timm_vit_config("S/8", img_size=48, **TINY)).eval()
    report = load_pretrained(model, save(wrapped, tmp_path / "ckpt.pth"))
    assert report.resampled == ["pos_embed.grid"] and "4x4 -> 6x6 (bicubic" in report.notes["pos_embed.grid"]
    img = torch.randn(3, 48, 48)
    ref = reference_vit(state, img, heads=3, grid=(4, 4))
    torch.testing.assert_close(features(model, [img])[0], ref, rtol=1e-5, atol=1e-5)


def test_non_square_native_grid(tmp_path):
    state = timm_state(grid=(2, 6))
    model = build_timm_model(save(state, tmp_path / "vit.safetensors"), img_size=(16, 48))
    img = torch.randn(3, 32, 32)
    torch.testing.assert_close(features(model, [img])[0], reference_vit(state, img, heads=3, grid=(2, 6)),
                               rtol=1e-5, atol=1e-5)
    other = mmvit.build_model(timm_vit_config("S/8", img_size=32, **TINY))
    with pytest.raises(ValueError, match="not a square grid"):
        load_pretrained(other, save(state, tmp_path / "vit.safetensors"))
    assert load_pretrained(other, str(tmp_path / "vit.safetensors"), grid_size=(2, 6)).resampled == ["pos_embed.grid"]


def test_timm_vit_config_names_and_errors():
    cfg = timm_vit_config("vit_base_patch16_384", num_classes=10)
    assert cfg["variant"] == "B/16" and cfg["pos_embed"]["grid_size"] == [24, 24]
    assert (cfg["bias"], cfg["qk_norm"], cfg["pool"], cfg["norm_eps"]) == (True, False, "cls", 1e-6)
    siglip = timm_vit_config("vit_base_patch16_siglip_256")
    assert siglip["pool"] == "map" and siglip["pos_embed"]["grid_size"] == [16, 16]
    video = timm_vit_config("S/16", tokenizer={"type": "central_frame", "frames": 2})
    assert video["tokenizer"] == {"type": "central_frame", "frames": 2}
    with pytest.raises(ValueError, match="multiple of the patch size"):
        timm_vit_config("S/16", img_size=100)
    with pytest.raises(KeyError, match="unknown pretrained format"):
        load_pretrained(mmvit.build_model({"variant": "Ti/16", "depth": 1}), "x.pth", format="jax")


def test_mmvit_format_into_a_new_head_and_patch_size(tmp_path):
    src = mmvit.build_model(timm_vit_config("S/8", num_classes=7, img_size=32, **TINY))
    path = save(src.state_dict(), tmp_path / "model.safetensors")
    dst = mmvit.build_model(timm_vit_config("S/16", num_classes=3, img_size=96, **TINY))
    report = load_pretrained(dst, path, format="mmvit")
    assert set(report.resampled) == {"tokenizer.weight", "pos_embed.grid"}
    assert "PI-resized 8x8 -> 16x16" in report.notes["tokenizer.weight"]
    assert set(report.ignored) == {"head.fc.weight", "head.fc.bias"}


def test_shipped_config_builds_a_vit_s16(tmp_path):
    """configs/pretrained/vit_s16_timm.yaml at full size, with a random S/16 checkpoint in timm's layout."""
    state = timm_state(width=384, depth=12, heads=6, patch=16, grid=(14, 14), num_classes=1000)
    path = save(state, tmp_path / "vit_small_patch16_224.safetensors")
    cfg = mmvit.load_config(os.path.join(ROOT, "configs/pretrained/vit_s16_timm.yaml"),
                            [f"model.init_from.path={path}"])
    model = build_init(cfg).eval()
    img = torch.randn(3, 224, 224)
    got = features(model, [img], patch_size=16)[0]
    torch.testing.assert_close(got, reference_vit(state, img, heads=6, grid=(14, 14)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs/pretrained"))))
def test_every_shipped_config_builds(name):
    from mmvit.models.build import build_model

    cfg = mmvit.load_config(os.path.join(ROOT, "configs/pretrained", name), ["model.init_from=null"])
    assert open(os.path.join(ROOT, "configs/pretrained", name)).readline().startswith("# python")
    model = build_model(cfg, device="meta")  # sizes and keys only, no memory
    assert model.cfg.bias and not model.cfg.qk_norm and model.pos_embed.grid.shape[:2] == (14, 14)

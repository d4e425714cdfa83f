import textwrap

import pytest
import torch

import mmvit
from mmvit.config import from_dict
from mmvit.models.navit import NaViTConfig
from mmvit.registry import Registry


def test_registry_duplicate_unknown_and_kwargs():
    reg = Registry("THINGS")

    @reg.register("box")
    class Box:
        def __init__(self, size: int = 1):
            self.size = size

    with pytest.raises(KeyError, match="already registered"):
        reg.register("box")(Box)
    with pytest.raises(KeyError, match=r"did you mean 'box'.*registered: \['box'\]"):
        reg.build({"type": "bocks"})
    with pytest.raises(KeyError, match="did you mean 'size'"):
        reg.build({"type": "box", "sise": 3})
    assert reg.build({"type": "box", "size": 3}).size == 3


def test_typed_config_unknown_key_names_nearest():
    with pytest.raises(KeyError, match="did you mean 'depth'"):
        from_dict(NaViTConfig, {"variant": "S/16", "detph": 3})
    cfg = from_dict(NaViTConfig, {"variant": "S/16", "depth": 3})
    assert (cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.patch_size) == (384, 3, 6, 1536, 16)
    with pytest.raises(KeyError, match="unknown variant"):
        from_dict(NaViTConfig, {"variant": "XL/16"})


def test_build_model_rejects_unknown_model_keys():
    with pytest.raises(KeyError, match="did you mean 'num_classes'"):
        mmvit.build_model({"variant": "Ti/16", "num_clases": 3})
    with pytest.raises(KeyError, match="POS_EMBEDS: unknown type 'lerned'"):
        mmvit.build_model({"variant": "Ti/16", "depth": 1, "pos_embed": {"type": "lerned"}})


def test_load_config_base_overrides_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(textwrap.dedent("""
        model: {variant: Ti/16, depth: 2, pos_embed: {type: learned}}
        train: {steps: 10}
    """))
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel: {depth: 3}\n")
    cfg = mmvit.load_config(str(tmp_path / "child.yaml"), ["model.pos_embed.type=sinusoidal", "train.steps=5"])
    assert cfg.model == {"variant": "Ti/16", "depth": 3, "pos_embed": {"type": "sinusoidal"}}
    assert cfg.train.steps == 5
    # A typo in an override is caught by the typed config of the section that reads it.
    cfg = mmvit.load_config(str(tmp_path / "child.yaml"), ["model.dept=4"])
    with pytest.raises(KeyError, match="did you mean 'depth'"):
        mmvit.build_model(cfg)
    with pytest.raises(KeyError, match="did you mean 'model'"):
        mmvit.load_config(str(tmp_path / "child.yaml"), ["modle.depth=4"])
    cfg = mmvit.load_config(str(tmp_path / "child.yaml"), ["model.drop_path=0.1", "+model.bias=true"])
    assert cfg.model["drop_path"] == 0.1 and cfg.model["bias"] is True
    cfg = mmvit.load_config(str(tmp_path / "child.yaml"), ["train.lr=1e-3", "train.name=abc", "train.steps=7"])
    assert cfg.train.lr == 1e-3 and cfg.train.name == "abc" and cfg.train.steps == 7
    (tmp_path / "bad.yaml").write_text("modle: {}\n")
    with pytest.raises(KeyError, match="did you mean 'model'"):
        mmvit.load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "deep.yaml").write_text("_base_: child.yaml\n")
    with pytest.raises(ValueError, match="only one level"):
        mmvit.load_config(str(tmp_path / "deep.yaml"))


def test_user_extension_through_imports(tmp_path, monkeypatch):
    """docs/extending.md: a user tokenizer registered from the user's own module, used from a config."""
    import shutil

    shutil.copy("docs/examples/my_tokenizers.py", tmp_path / "my_tokenizers.py")
    shutil.copy("docs/examples/extending.yaml", tmp_path / "extending.yaml")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = mmvit.load_config(str(tmp_path / "extending.yaml"))
    model = mmvit.build_model(cfg).eval()
    assert type(model.tokenizer).__name__ == "ConvStemTokenizer"
    out = model(mmvit.pack([torch.randn(3, 32, 48)], patch_size=16, seq_len=8))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_config_dump_roundtrip(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {variant: Ti/16, pos_embed: {type: learned}}\ntrain: {steps: 3}\n")
    cfg = mmvit.load_config(str(tmp_path / "c.yaml"))
    assert cfg.model.pos_embed.type == "learned"
    cfg.dump(str(tmp_path / "out.yaml"))
    assert mmvit.load_config(str(tmp_path / "out.yaml")) == cfg


def test_base_component_with_new_type_is_replaced(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {variant: Ti/16, pos_embed: {type: learned, fractional: true}}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel: {pos_embed: {type: grid2d}}\n")
    cfg = mmvit.load_config(str(tmp_path / "child.yaml"))
    assert cfg.model.pos_embed == {"type": "grid2d"}

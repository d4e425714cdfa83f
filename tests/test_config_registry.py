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
    assert type(model.tokenizer).__name__ == "PatchMLPTokenizer"
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


def test_exponent_numbers_are_floats_in_every_section(tmp_path):
    """``1e-1`` without a dot: YAML 1.1 (PyYAML) reads it as a string. The config reader makes it a float in
    every section, and each section's typed config also coerces such strings (from --set, old checkpoints)."""
    from mmvit.data import resolve_data_config
    from mmvit.objectives import build_objective
    from mmvit.train.config import parse
    from mmvit.train.curriculum import build_curriculum

    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        seed: 0
        model: {width: 8, depth: 1, heads: 1, mlp_dim: 8, patch_size: 4, num_classes: 2, drop_path: 1e-1}
        objective: {type: classification, label_smoothing: 1e-1}
        data: {sources: [{type: synthetic}], max_bad_fraction: 5e-2}
        train: {lr: 3e-4, weight_decay: 5e-2, steps: 1e1}
        curriculum: {type: multigrid, final_fraction: 3e-1}
        eval: {every: 1e2}
        deepspeed: {gradient_clipping: 1e0}
    """))
    cfg = mmvit.load_config(str(path)).to_dict()
    read = {"model": cfg["model"]["drop_path"], "objective": cfg["objective"]["label_smoothing"],
            "data": cfg["data"]["max_bad_fraction"], "train": cfg["train"]["lr"],
            "curriculum": cfg["curriculum"]["final_fraction"], "deepspeed": cfg["deepspeed"]["gradient_clipping"]}
    assert read == {"model": 0.1, "objective": 0.1, "data": 0.05, "train": 3e-4, "curriculum": 0.3, "deepspeed": 1.0}
    assert all(type(v) is float for v in read.values())

    # The same values as strings reach every typed section as numbers of the declared type.
    model = mmvit.build_model(dict(cfg["model"], drop_path="1e-1"))
    assert model.cfg.drop_path == 0.1 and type(model.cfg.drop_path) is float
    objective = build_objective({"type": "classification", "label_smoothing": "1e-1"}, model)
    assert objective.label_smoothing == 0.1
    data = resolve_data_config(dict(cfg["data"], max_bad_fraction="5e-2"), "train")
    assert data.max_bad_fraction == 0.05
    train, ev, _ = parse({"train": {"lr": "3e-4", "weight_decay": "5e-2", "steps": "1e1"}, "eval": {"every": "1e2"}})
    assert (train.lr, train.weight_decay, train.steps, ev.every) == (3e-4, 0.05, 10, 100)
    assert type(train.steps) is int and type(ev.every) is int
    stages = build_curriculum({"type": "multigrid", "final_fraction": "3e-1"}, total_steps=10, data=data)
    assert stages is not None
    with pytest.raises(ValueError, match="data.max_bad_fraction"):
        resolve_data_config(dict(cfg["data"], max_bad_fraction="5e+2"), "train")  # a range still applies


@pytest.mark.parametrize("where, value, allowed", [
    ("model.pool", "mapp", ["map", "mean", "cls"]),
    ("train.schedule", "cosin", ["cosine", "constant"]),
    ("data.video_backend", "ffmpeg", ["decord", "pyav", "auto"]),
    ("eval.aggregate", "mean", ["mean_prob", "mean_logit", "max_prob"]),
])
def test_a_wrong_choice_names_the_allowed_values(where, value, allowed):
    from mmvit.data import resolve_data_config
    from mmvit.train.config import parse

    section, key = where.split(".")
    build = {"model": lambda v: mmvit.build_model({"width": 8, "depth": 1, "heads": 1, "mlp_dim": 8,
                                                   "patch_size": 4, key: v}),
             "train": lambda v: parse({"train": {key: v}}),
             "eval": lambda v: parse({"eval": {key: v}}),
             "data": lambda v: resolve_data_config({"sources": [{"type": "synthetic"}], key: v}, "train")}[section]
    with pytest.raises(ValueError) as err:
        build(value)
    message = str(err.value)
    assert where in message and repr(value) in message
    assert all(repr(a) in message for a in allowed), message


def test_a_component_section_without_type_keeps_the_default_type():
    cfg = {"width": 8, "depth": 1, "heads": 1, "mlp_dim": 8, "patch_size": 4, "num_classes": 3}
    model = mmvit.build_model(dict(cfg, head={"zero_init": False}, pos_embed={"fractional": True}))
    assert model.head.fc.weight.abs().sum() > 0  # the linear head, not zero-initialised
    assert type(model.pos_embed).__name__ == type(mmvit.build_model(cfg).pos_embed).__name__
    assert mmvit.build_model(cfg).head.fc.weight.abs().sum() == 0

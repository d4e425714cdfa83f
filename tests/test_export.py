"""Export: real DeepSpeed checkpoints (ZeRO 0, 1, 3; made on CPU in a subprocess) to safetensors + config."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import mmvit
from mmvit.export import export
from tests.test_pretrained_reference import timm_state

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in its own process: deepspeed.initialize leaves a process group and globals behind.
TRAIN = textwrap.dedent("""
    import json, os, sys
    import torch, yaml
    import deepspeed
    import mmvit

    spec = json.load(open(sys.argv[1]))
    for run in spec["runs"]:
        torch.manual_seed(0)
        cfg = spec["config"]
        model = mmvit.build_model(cfg["model"])
        ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
              "zero_optimization": {"stage": run["stage"]}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
        images = [torch.randn(3, 16, 24), torch.randn(3, 24, 8), torch.randn(3, 2, 16, 16)]
        batch = mmvit.pack(images, patch_size=8, seq_len=16, labels=[0, 1, 2])
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(engine(batch), batch.labels)
            engine.backward(loss)
            engine.step()
        client = {"config": cfg} if run["client_state"] else {}
        engine.save_checkpoint(run["save_dir"], client_state=client)
        if not run["client_state"]:
            with open(os.path.join(os.path.dirname(run["save_dir"]), "config.yaml"), "w") as f:
                yaml.safe_dump(cfg, f)
        engine.eval()
        with torch.no_grad():
            torch.save({"images": images, "logits": engine(batch)}, run["save_dir"] + ".expected.pt")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    timm_path = str(tmp / "vit.pth")
    torch.save(timm_state(width=32, depth=2, heads=2, patch=8, grid=(2, 2), num_classes=0), timm_path)
    model = {"variant": "Ti/8", "width": 32, "depth": 2, "heads": 2, "mlp_dim": 128, "num_classes": 3,
             "bias": True, "qk_norm": False, "pool": "cls", "pos_embed": {"type": "grid2d", "grid_size": [2, 2]},
             "head": {"type": "linear", "zero_init": False}, "init_from": {"path": timm_path, "format": "timm"}}
    config = {"name": "export-test", "model": model, "train": {"steps": 2}}
    runs = [{"stage": 0, "client_state": True, "save_dir": str(tmp / "z0" / "checkpoints")},
            {"stage": 1, "client_state": False, "save_dir": str(tmp / "z1" / "checkpoints")},
            {"stage": 3, "client_state": True, "save_dir": str(tmp / "z3" / "checkpoints")}]
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"config": config, "runs": runs}))
    script = tmp / "train.py"
    script.write_text(TRAIN)
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(spec)], env=env, cwd=str(tmp), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    os.remove(timm_path)  # the exported model must not need the pretrained file any more
    return runs


@pytest.mark.parametrize("index", [0, 1, 2], ids=["zero0-client_state", "zero1-config.yaml", "zero3"])
def test_export_round_trip(checkpoints, tmp_path, index):
    run = checkpoints[index]
    result = export(run["save_dir"], str(tmp_path / "out"))
    assert result.zero_stage == run["stage"]
    assert result.weights_source == ("module" if run["stage"] == 0 else "zero_to_fp32")
    assert (result.config_source == "client_state") == run["client_state"]
    cfg = mmvit.load_config(result.config)
    assert "init_from" not in cfg.model and cfg.name == "export-test"
    model = mmvit.build_model(cfg, weights=result.weights).eval()
    expected = torch.load(run["save_dir"] + ".expected.pt")
    batch = mmvit.pack(expected["images"], patch_size=8, seq_len=16)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected["logits"], rtol=0, atol=1e-6)


def test_export_from_tag_dir_and_cli(checkpoints, tmp_path):
    save_dir = checkpoints[0]["save_dir"]
    tag = open(os.path.join(save_dir, "latest")).read().strip()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), os.path.join(save_dir, tag),
                           "--out", str(tmp_path / "cli"), "--dtype", "bfloat16"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cli" / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "mmvit"
        assert f.get_tensor("blocks.0.attn.qkv.weight").dtype == torch.bfloat16
    assert yaml.safe_load(open(tmp_path / "cli" / "config.yaml"))["model"]["width"] == 32


def test_export_errors(tmp_path, checkpoints):
    with pytest.raises(FileNotFoundError, match="nor a DeepSpeed checkpoint"):
        export(str(tmp_path), str(tmp_path / "out"))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"model": {"variant": "Ti/8", "width": 32, "depth": 1, "heads": 2}}))
    with pytest.raises(KeyError, match="do not match"):
        export(checkpoints[0]["save_dir"], str(tmp_path / "out"), config=str(wrong))

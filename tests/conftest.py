import os
import socket
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model(**overrides):
    """A tiny NaViT whose head is not zero (zero-init heads would make logit tests vacuous)."""
    import mmvit

    cfg = {"type": "navit", "variant": "Ti/16", "width": 32, "depth": 2, "heads": 2, "mlp_dim": 64,
           "patch_size": 8, "num_classes": 5, "head": {"type": "linear", "zero_init": False}}
    cfg.update(overrides)
    return mmvit.build_model(cfg)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_env() -> dict:
    """Environment for a training subprocess: one thread, this checkout first on the path, no rank variables
    inherited from an enclosing launcher."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

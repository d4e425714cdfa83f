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


_PORTS: set[int] = set()  # every port handed to a launcher in this session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _PORTS.add(port)
    return port


@pytest.fixture(scope="session", autouse=True)
def _remove_shm_buffers():
    """A run killed before its ranks met (a test's timeout) cannot unlink its DeepSpeed all-reduce buffers
    (mmvit.train.engine.release_shm_buffer): remove those of this session's ports, which are in RAM."""
    yield
    # The tests import this file as ``tests.conftest``, pytest loads it under another name: two sets.
    ports = set().union(*(getattr(m, "_PORTS", ()) for m in (sys.modules.get("conftest"), sys.modules.get("tests.conftest"))))
    from mmvit.train.engine import SHM_DIR, SHM_PREFIX

    if os.path.isdir(SHM_DIR):
        for name in os.listdir(SHM_DIR):
            if name.startswith(SHM_PREFIX) and any(f"_{p}_" in name for p in ports):
                os.remove(os.path.join(SHM_DIR, name))

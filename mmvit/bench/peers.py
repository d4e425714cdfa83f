"""Peer implementations for the step benchmark, installed only for benchmarking:

    pip install --no-deps vit-pytorch==1.26.11

vit-pytorch's package ``__init__`` imports modules that need torchvision; its two NaViT files need only torch
and einops, so they are loaded on their own, by file, from the installed package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

PEERS = {"vit-pytorch na_vit": "na_vit", "vit-pytorch na_vit_nested_tensor": "na_vit_nested_tensor"}
INSTALL = "pip install --no-deps vit-pytorch==1.26.11"


def load(module: str) -> tuple[ModuleType | None, str]:
    """The module ``vit_pytorch.<module>``, or None and the reason it is unavailable."""
    try:
        spec = importlib.util.find_spec("vit_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, f"vit-pytorch is not installed ({INSTALL})"
    path = os.path.join(next(iter(spec.submodule_search_locations)), module + ".py")
    if not os.path.exists(path):
        return None, f"vit-pytorch has no {module}.py (benchmarked with 1.26.11)"
    name = f"mmvit_bench_peer_{module}"
    if name in sys.modules:
        return sys.modules[name], ""
    file_spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(mod)
    except ImportError as e:
        return None, f"vit-pytorch {module} does not import: {e}"
    sys.modules[name] = mod
    return mod, ""

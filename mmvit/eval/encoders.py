"""Frozen encoders for feature extraction and probes: a trained checkpoint, or a random copy of its architecture.

An encoder is any mmvit model with ``forward_tokens`` (a classifier, or the encoder a pretraining run exports);
its heads are ignored. ``--checkpoint`` accepts whatever :func:`mmvit.load` does; ``random:<checkpoint>``
builds the same architecture with fresh weights (seeded), the baseline a pretrained encoder must beat.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import torch

log = logging.getLogger("mmvit.eval")

RANDOM_PREFIX = "random:"


@dataclasses.dataclass
class Encoder:
    name: str
    model: torch.nn.Module
    cfg: dict
    source: str          # the weights it came from, or "random (seed N)"
    tables: object = None


def parse_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> ``(NAME, PATH)``; a bare ``PATH`` -> ``(None, PATH)``."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not name.startswith("."):
        return name, path
    return None, spec


def run_tables(cfg: dict):
    """The class tables labels are read with: the run's, else rebuilt from the training split's sources."""
    from mmvit.data.classes import resolve_class_tables, tables_of

    return tables_of(cfg) or resolve_class_tables(cfg)


def load_encoder(spec: str, config: str | None = None, overrides: Sequence[str] = (), *, seed: int = 0,
                 device: torch.device | str = "cpu") -> Encoder:
    """An encoder in eval mode with ``requires_grad=False`` (``spec`` as in :func:`parse_spec`; a path
    prefixed ``random:`` gives the architecture with fresh weights from ``torch.manual_seed(seed)``)."""
    from mmvit.config import load_config
    from mmvit.loading import load
    from mmvit.models.build import build_model

    name, path = parse_spec(spec)
    if path == RANDOM_PREFIX and config is None:
        raise ValueError("random: without a checkpoint needs --config (the architecture to build)")
    if path.startswith(RANDOM_PREFIX):
        path = path[len(RANDOM_PREFIX):]
        if config is not None:   # "random:" alone: the architecture of the config
            cfg = load_config(config, overrides)
        else:
            from mmvit import checkpoint as ckpt

            kind, resolved = ckpt.resolve(path)
            if kind != "weights":
                cfg = load(path, None, overrides).cfg
            else:
                cfg = load_config(os.path.join(os.path.dirname(os.path.abspath(resolved)), ckpt.CONFIG_NAME),
                                  overrides)
        torch.manual_seed(seed)
        model = build_model(cfg)
        source = f"random (seed {seed}, architecture of {path or config})"
        name = name or "random"
    else:
        loaded = load(path, config, overrides, device=device)
        model, cfg, source = loaded.model, loaded.cfg, loaded.weights
        name = name or "encoder"
    if not hasattr(model, "forward_tokens"):
        raise TypeError(f"{type(model).__name__} has no forward_tokens(batch): it cannot be probed")
    model = model.to(device).eval().requires_grad_(False)
    cfg = dict(cfg)
    return Encoder(name, model, cfg, source, run_tables(cfg))

"""``build_model``: a config's ``model:`` section to an ``nn.Module``, optionally with trained weights.

It only builds: pretrained weights named by ``model.init_from`` are applied by whoever builds for training
(``mmvit.pretrained.apply_init_from``), so that building a trained model from its exported config never
reaches for the original pretrained file.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mmvit.registry import MODELS


def model_section(cfg: Mapping) -> dict:
    """The ``model:`` dict of a full config, or ``cfg`` itself when it is one."""
    if isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"])
    return dict(cfg)


def build_model(cfg: Mapping, weights: str | None = None, device=None, dtype=None) -> torch.nn.Module:
    """Build from a full config (its ``model`` section) or from a ``model:`` dict; ``weights``: a weights
    file loaded strictly (see :func:`mmvit.checkpoint.load_weights`)."""
    import mmvit.models  # noqa: F401  (registers the built-in components)
    from mmvit.checkpoint import load_weights

    model_cfg = model_section(cfg)
    model_cfg.setdefault("type", "navit")
    model = MODELS.build(model_cfg, device=device, dtype=dtype)
    if weights is not None:
        load_weights(model, weights)
    return model

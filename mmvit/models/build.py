"""``build_model``: a config's ``model:`` section to an ``nn.Module``, optionally with weights."""

from __future__ import annotations

import torch

from mmvit.config import Config
from mmvit.registry import MODELS


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Strictly load a ``.safetensors`` file, or a ``.pt/.pth`` state dict read with ``weights_only=True``."""
    from mmvit.pretrained.load import read_state_dict

    state = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}: weights do not match the model; missing {missing[:8]}, unexpected {unexpected[:8]}")


def build_model(cfg: Config | dict, weights: str | None = None, device=None, dtype=None) -> torch.nn.Module:
    """Build from a full :class:`Config` (uses its ``model`` section) or from a ``model:`` dict."""
    import mmvit.models  # noqa: F401  (registers the built-in components)

    model_cfg = dict(cfg["model"] if isinstance(cfg, Config) else cfg)
    model_cfg.setdefault("type", "navit")
    model = MODELS.build(model_cfg, device=device, dtype=dtype)
    init_from = getattr(getattr(model, "cfg", None), "init_from", None)
    if weights is not None:
        load_weights(model, weights)
    elif init_from:
        from mmvit.pretrained import load_pretrained

        # Kept on the model so that the trainer can log what was loaded, resampled or initialised.
        model.pretrained_report = load_pretrained(model, **init_from)
    return model

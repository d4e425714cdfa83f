"""mmvit: native-resolution image and video transformers (Patch n' Pack) trained with DeepSpeed.

Importing mmvit is light: no xformers, deepspeed, decord or PyAV until a feature needs them.
"""

from mmvit.config import Config, load_config
from mmvit.packing import PackedBatch, pack
from mmvit.registry import CURRICULA, DATASETS, HEADS, MODELS, OBJECTIVES, POS_EMBEDS, TOKENIZERS

__version__ = "0.1.0"


def build_model(cfg, weights: str | None = None):
    """Build a model from a config (its ``model`` section) or a ``model:`` dict.

    ``weights``: a ``.safetensors`` file (or a ``.pth`` read with ``weights_only=True``) to load strictly.
    Pretrained weights named by ``model.init_from`` are not applied here (see :func:`load_pretrained`).
    """
    from mmvit.models.build import build_model as _build

    return _build(cfg, weights=weights)


def load(checkpoint: str, config: str | None = None, overrides=(), device="cpu"):
    """A trained model (eval mode) with its config from a weights file, run dir or DeepSpeed checkpoint."""
    from mmvit.loading import load as _load

    return _load(checkpoint, config, overrides, device)


def load_pretrained(model, path: str, format: str = "timm", **kwargs):
    """Load a pretrained checkpoint into ``model``; returns a report of loaded/resampled/initialised keys."""
    from mmvit.pretrained import load_pretrained as _load

    return _load(model, path, format=format, **kwargs)


__all__ = [
    "Config", "load_config", "PackedBatch", "pack", "build_model", "load", "load_pretrained",
    "TOKENIZERS", "POS_EMBEDS", "MODELS", "HEADS", "DATASETS", "CURRICULA", "OBJECTIVES",
]

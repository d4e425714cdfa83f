"""Export a DeepSpeed training checkpoint as ``model.safetensors`` + ``config.yaml``.

Any ZeRO stage: stages 1-3 are consolidated to fp32 with DeepSpeed's
``zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` (the fp32 master weights from the optimizer
shards); a stage-0 checkpoint holds the whole model in its ``mp_rank_00_model_states.pt`` (``module``).
The config comes from the checkpoint's client state (key ``config``, saved by ``engine.save_checkpoint(...,
client_state={"config": ...})``) or from a ``config.yaml`` found next to the checkpoint. The weights are
loaded strictly into the model that config builds before anything is written, so that
``mmvit.build_model(cfg, weights=DIR/model.safetensors)`` gives back the trained model.

Checkpoint layout (``engine.save_checkpoint(save_dir)``)::

    save_dir/latest                              the newest tag, e.g. global_step100
    save_dir/global_step100/*model_states.pt     module (stage 0-2), client state, ds_config
    save_dir/global_step100/*optim_states.pt     ZeRO optimizer shards (stages 1-3)
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import pickle
from typing import Literal

import torch

from mmvit.config import Config, import_modules, load_config

logger = logging.getLogger("mmvit.pretrained")

CONFIG_KEY = "config"     # client_state key holding the full config dict
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class ExportResult:
    weights: str            # DIR/model.safetensors
    config: str             # DIR/config.yaml
    checkpoint: str         # the tag directory that was read
    zero_stage: int         # from the checkpoint's ds_config
    weights_source: str     # "zero_to_fp32" (optimizer shards) or "module" (stage 0)
    config_source: str      # "client_state" or the config.yaml path
    num_params: int


def resolve_checkpoint(path: str, tag: str | None = None) -> tuple[str, str]:
    """``(save_dir, tag)`` from a save dir (with ``latest``) or a tag dir (``.../global_stepN``)."""
    path = os.path.abspath(path)
    if tag is not None:
        return path, tag
    if glob.glob(os.path.join(path, "*model_states.pt")):
        return os.path.dirname(path), os.path.basename(path)
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return path, f.read().strip()
    raise FileNotFoundError(f"{path} is not a DeepSpeed checkpoint: expected a directory with a 'latest' file "
                            f"(engine.save_checkpoint's save_dir) or one with *model_states.pt files (a tag)")


def _load_pickle(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Stage-0 files pickle optimizer state beyond plain tensors. This is a checkpoint our own training
        # run wrote, which DeepSpeed itself loads the same way.
        return torch.load(path, map_location="cpu", weights_only=False)


def consolidate(save_dir: str, tag: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """fp32 state dict, the model-states file's contents (client state included) and where the weights
    came from: ``zero_to_fp32`` (ZeRO optimizer shards) or ``module`` (stage 0)."""
    tag_dir = os.path.join(save_dir, tag)
    states_files = sorted(glob.glob(os.path.join(tag_dir, "*model_states.pt")))
    if not states_files:
        raise FileNotFoundError(f"{tag_dir}: no *model_states.pt files")
    states = _load_pickle(states_files[0])
    if glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(save_dir, tag=tag)
        source = "zero_to_fp32"
    else:
        source = "module"
        module = states.get("module")
        if not isinstance(module, dict):
            raise ValueError(f"{states_files[0]}: no 'module' state dict and no ZeRO optimizer shards")
        low = sorted({str(v.dtype) for v in module.values() if v.is_floating_point() and v.dtype != torch.float32})
        if low:
            logger.warning("%s: stage-0 weights are stored in %s; exported as float32 upcasts", tag_dir, low)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    return weights, states, source


def find_config(save_dir: str, tag: str, states: dict, config: str | None = None) -> tuple[dict, str]:
    """The training config: ``config`` if given, else client state, else the nearest ``config.yaml``."""
    if config is not None:
        return load_config(config).to_dict(), config
    if isinstance(states.get(CONFIG_KEY), dict):
        return states[CONFIG_KEY], "client_state"
    # The run dir holds config.yaml; checkpoints sit in it or one level below (run_dir/checkpoints).
    for folder in (os.path.join(save_dir, tag), save_dir, os.path.dirname(save_dir)):
        candidate = os.path.join(folder, "config.yaml")
        if os.path.isfile(candidate):
            return load_config(candidate).to_dict(), candidate
    raise FileNotFoundError(f"no config for {save_dir}/{tag}: the client state has no {CONFIG_KEY!r} key and no "
                            f"config.yaml is in the tag dir, {save_dir} or its parent; pass --config")


def _match_keys(weights: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip a wrapper prefix (``module.``, ``model.``...) when that makes the keys the model's."""
    if set(weights) == expected:
        return weights
    for key in weights:
        for name in expected:
            if key.endswith("." + name):
                prefix = key[: -len(name)]
                if all(k.startswith(prefix) for k in weights):
                    stripped = {k[len(prefix):]: v for k, v in weights.items()}
                    if set(stripped) == expected:
                        return stripped
                break
    return weights


def export(checkpoint: str, out: str, *, tag: str | None = None, config: str | None = None,
           dtype: Literal["float32", "bfloat16", "float16"] = "float32") -> ExportResult:
    """Write ``out/model.safetensors`` and ``out/config.yaml`` from a DeepSpeed checkpoint.

    Args:
        checkpoint: the ``save_dir`` given to ``engine.save_checkpoint`` (the ``latest`` tag is used) or a
            tag directory inside it.
        out: output directory (created).
        tag: a tag other than ``latest``.
        config: a config file to use instead of the one saved with the run.
        dtype: dtype of the written weights.

    Raises:
        KeyError: the weights do not match the model the config builds (lists missing/unexpected keys).
    """
    from safetensors.torch import save_file

    from mmvit.models.build import build_model

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    save_dir, tag = resolve_checkpoint(checkpoint, tag)
    weights, states, source = consolidate(save_dir, tag)
    stage = int(((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
    cfg_dict, cfg_source = find_config(save_dir, tag, states, config)
    cfg = Config(cfg_dict).to_dict()
    if "model" not in cfg:
        raise KeyError(f"the config from {cfg_source} has no model section")
    # The exported weights already contain whatever init_from brought in: drop it, so that building
    # from the exported config never reaches for the original pretrained file.
    cfg["model"].pop("init_from", None)

    import_modules(cfg.get("imports") or [])   # user components named by the config
    model = build_model(cfg["model"])
    expected = set(model.state_dict())
    weights = _match_keys(weights, expected)
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise KeyError(f"{save_dir}/{tag}: the weights do not match the model of the config ({cfg_source}); "
                       f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict(weights, strict=True)

    os.makedirs(out, exist_ok=True)
    tensors = {k: v.detach().to(_DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in model.state_dict().items()}
    weights_path = os.path.join(out, "model.safetensors")
    metadata = {"format": "mmvit", "source": os.path.join(save_dir, tag), "zero_stage": str(stage)}
    save_file(tensors, weights_path, metadata=metadata)
    config_path = os.path.join(out, "config.yaml")
    Config(cfg).dump(config_path)
    result = ExportResult(weights=weights_path, config=config_path, checkpoint=os.path.join(save_dir, tag),
                          zero_stage=stage, weights_source=source, config_source=cfg_source,
                          num_params=sum(t.numel() for t in tensors.values()))
    logger.info("exported %s (ZeRO stage %d, weights from %s, config from %s) to %s: %d tensors, %d values",
                result.checkpoint, stage, source, cfg_source, out, len(tensors), result.num_params)
    return result

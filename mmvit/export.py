"""Trained weights out: ``model.safetensors`` + ``config.yaml`` (+ ``classes.json``) that rebuild the model.

Two writers share :func:`write_export`: the end of a training run (mmvit/train/export.py, from the live
engine) and :func:`export` (tools/export.py), which reads a DeepSpeed checkpoint of any ZeRO stage through
:mod:`mmvit.checkpoint` and checks the weights against the model its config builds before anything is
written, so that ``mmvit.build_model(cfg, weights=DIR/model.safetensors)`` gives back the trained model.
safetensors holds tensors only: loading it runs no pickled code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Literal

import torch

from mmvit import checkpoint as ckpt
from mmvit.config import Config, import_modules, load_config

logger = logging.getLogger("mmvit.export")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class ExportResult:
    weights: str            # DIR/model.safetensors
    config: str             # DIR/config.yaml
    checkpoint: str         # the tag directory that was read
    zero_stage: int         # from the checkpoint's ds_config
    weights_source: str     # "zero_to_fp32" (optimizer shards) or "module" (stage 0)
    config_source: str      # "client_state", a config.yaml path, or the --config given
    num_params: int


def export_config(cfg: dict) -> dict:
    """The config written beside exported weights: ``init_from`` is dropped (the weights already hold
    what it brought in; building from the export must never reach for the original pretrained file)."""
    out = Config(cfg).to_dict()
    (out.get("model") or {}).pop("init_from", None)
    return out


def write_export(out: str, weights: dict[str, torch.Tensor], cfg: dict, *, name: str = ckpt.WEIGHTS_NAME,
                 metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                 classes: dict | None = None) -> list[str]:
    """Write ``out/<name>``, ``out/config.yaml`` and (with ``classes``) ``out/classes.json``; returns the paths."""
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    tensors = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
               .clone().cpu() for k, v in weights.items()}
    paths = [os.path.join(out, name), os.path.join(out, ckpt.CONFIG_NAME)]
    save_file(tensors, paths[0], metadata={"format": "mmvit", **(metadata or {})})
    Config(export_config(cfg)).dump(paths[1])
    if classes is not None:
        paths.append(os.path.join(out, ckpt.CLASSES_NAME))
        with open(paths[-1], "w") as f:
            json.dump(classes, f, indent=1)
    return paths


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


def objective_weights(weights: dict[str, torch.Tensor], cfg: dict, model, states: dict | None = None,
                      online: bool = False) -> dict[str, torch.Tensor]:
    """The exported model's weights out of a checkpoint of the whole objective: for a pretraining objective
    (``mae``: the encoder; ``jepa``: the target encoder, or with ``online`` the context encoder) the keys under
    its :meth:`export_prefix`, with the prefix removed; the weights as they are otherwise (``classification``:
    ``_match_keys`` strips ``model.``).

    ZeRO 1 keeps no copy of frozen parameters (JEPA's target encoder, the unused pooling) in its optimizer
    shards, which is where ``zero_to_fp32`` reads: they are taken from the module state of ``states`` (ZeRO 0-2
    store them whole there; ZeRO 3 stores them as frozen fragments, which ``zero_to_fp32`` does read).
    """
    from mmvit.objectives.base import build_objective, objective_type

    if objective_type(cfg.get("objective")) == "classification":
        return weights
    prefix = build_objective(cfg.get("objective"), model).export_prefix(online)
    module = (states or {}).get("module") or {}
    weights = {**{k: v.float() if v.is_floating_point() else v for k, v in module.items()
                  if k not in weights and v.numel() > 0}, **weights}
    out = {}
    for key, value in weights.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def export(checkpoint: str, out: str, *, tag: str | None = None, config: str | None = None,
           dtype: Literal["float32", "bfloat16", "float16"] = "float32", online: bool = False) -> ExportResult:
    """Write ``out/model.safetensors`` and ``out/config.yaml`` from a DeepSpeed checkpoint.

    Args:
        checkpoint: a tag directory, ``engine.save_checkpoint``'s save dir, or a run dir (its newest complete
            checkpoint, else the one ``latest`` names; see :func:`mmvit.checkpoint.resolve`).
        out: output directory (created).
        tag: a tag of the save dir instead.
        config: a config file to use instead of the one saved with the run.
        dtype: dtype of the written weights.
        online: the trained model itself rather than the objective's export model (JEPA: the context encoder
            instead of the target encoder; the same for the other objectives).

    Raises:
        KeyError: the weights do not match the model the config builds (lists missing/unexpected keys).
    """
    from mmvit.models.build import build_model

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if tag is not None:
        save_dir, tag = ckpt.split_tag(checkpoint, tag)
    else:
        kind, path = ckpt.resolve(checkpoint)
        if kind != "deepspeed":
            raise ValueError(f"{checkpoint} holds exported weights ({path}), not a DeepSpeed checkpoint")
        save_dir, tag = os.path.dirname(path), os.path.basename(path)
    tag_dir = os.path.join(save_dir, tag)
    weights, states, source = ckpt.consolidate(save_dir, tag)
    stage = int(((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
    if config is not None:
        cfg_dict, cfg_source = load_config(config).to_dict(), config
    else:
        cfg_dict, cfg_source = ckpt.find_config(tag_dir, states)
        if cfg_dict is None:
            raise FileNotFoundError(f"no config for {tag_dir}: the client state has no {ckpt.CONFIG_KEY!r} key and no "
                                    f"{ckpt.CONFIG_NAME} is in the tag dir, its save dir or their parent; pass --config")
    cfg = export_config(cfg_dict)
    if "model" not in cfg:
        raise KeyError(f"the config from {cfg_source} has no model section")

    import_modules(cfg.get("imports") or [])   # user components named by the config
    model = build_model(cfg)
    expected = set(model.state_dict())
    weights = _match_keys(objective_weights(weights, cfg, build_model(cfg), states, online), expected)
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise KeyError(f"{tag_dir}: the weights do not match the model of the config ({cfg_source}); "
                       f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict(weights, strict=True)
    classes = states.get(ckpt.CLASSES_KEY)
    paths = write_export(out, model.state_dict(), cfg, dtype=_DTYPES[dtype], classes=classes,
                         metadata={"source": tag_dir, "zero_stage": str(stage)})
    result = ExportResult(weights=paths[0], config=paths[1], checkpoint=tag_dir, zero_stage=stage,
                          weights_source=source, config_source=str(cfg_source),
                          num_params=sum(t.numel() for t in model.state_dict().values()))
    logger.info("exported %s (ZeRO stage %d, weights from %s, config from %s) to %s: %d values",
                result.checkpoint, stage, source, cfg_source, out, result.num_params)
    return result

"""Find the weights and the config of a checkpoint to evaluate, and build the model from them.

Accepted checkpoints:

- a weights file (``model.safetensors``, or a ``.pt/.pth`` state dict): the config is ``--config`` or the
  ``config.yaml`` beside it;
- a run directory holding ``model.safetensors`` (and ``config.yaml``), as training writes at the end;
- a DeepSpeed checkpoint: ``engine.save_checkpoint``'s save dir, a tag dir inside it, or a run directory with
  such a save dir under ``checkpoints/``. In a save dir the newest ``global_stepN`` with the ``COMPLETE``
  marker of tools/train.py is used, else the one ``latest`` names. Any ZeRO stage is consolidated to fp32 by
  ``mmvit.pretrained.export`` (DeepSpeed's ``zero_to_fp32``) into a temporary folder; the config comes from
  ``--config``, else from the checkpoint's client state or a ``config.yaml`` next to it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile
from collections.abc import Iterable

import torch

from mmvit.config import Config, load_config

WEIGHTS_NAME = "model.safetensors"
_STEP = re.compile(r"^global_step(\d+)$")
CONFIG_NAME = "config.yaml"


@dataclasses.dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    cfg: Config
    weights: str         # the file the weights came from (the temporary export for DeepSpeed checkpoints)
    config: str          # the config file that was read
    kind: str            # "weights" or "deepspeed"


def _is_deepspeed_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "latest")) or bool(glob.glob(os.path.join(path, "*model_states.pt")))


def resolve(checkpoint: str) -> tuple[str, str]:
    """``("weights", file)`` or ``("deepspeed", dir)`` for a checkpoint path; raises if it is neither."""
    if os.path.isfile(checkpoint):
        return "weights", checkpoint
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    if os.path.isfile(os.path.join(checkpoint, WEIGHTS_NAME)):
        return "weights", os.path.join(checkpoint, WEIGHTS_NAME)
    for folder in (checkpoint, os.path.join(checkpoint, "checkpoints")):
        if not os.path.isdir(folder):
            continue
        # A save dir of tools/train.py: its newest checkpoint with a COMPLETE marker ('latest' may name a
        # save that was interrupted).
        complete = [p for p in glob.glob(os.path.join(folder, "global_step*"))
                    if os.path.isfile(os.path.join(p, "COMPLETE")) and _STEP.match(os.path.basename(p))]
        if complete:
            return "deepspeed", max(complete, key=lambda p: int(_STEP.match(os.path.basename(p)).group(1)))
        if _is_deepspeed_dir(folder):
            return "deepspeed", folder
    raise FileNotFoundError(f"{checkpoint}: neither a weights file, nor a directory with {WEIGHTS_NAME}, nor a "
                            f"DeepSpeed checkpoint (a save dir with 'latest', a tag dir with *model_states.pt, "
                            f"or a run dir with checkpoints/)")


def load_for_eval(checkpoint: str, config: str | None = None, overrides: Iterable[str] = (),
                  device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Build the model of ``checkpoint`` with its weights loaded strictly, in eval mode, on ``device``.

    Args:
        checkpoint: see the module docstring.
        config: a config file to use instead of the one saved with the checkpoint.
        overrides: ``key=value`` config overrides (applied to whichever config is read).
        device: where the model goes.
    """
    from mmvit.models.build import build_model

    overrides = list(overrides)
    kind, path = resolve(checkpoint)
    cfg = load_config(config, overrides) if config is not None else None
    if kind == "weights":
        config_path = config or os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_NAME)
        if cfg is None:
            if not os.path.isfile(config_path):
                raise FileNotFoundError(f"no config for {path}: {config_path} does not exist; pass --config")
            cfg = load_config(config_path, overrides)
        model = build_model(cfg, weights=path)
        weights = path
    else:
        from mmvit.pretrained.export import export

        with tempfile.TemporaryDirectory(prefix="mmvit_eval_") as tmp:
            resolved = None
            if cfg is not None:  # export reads plain YAML: hand it the merged, overridden config
                resolved = os.path.join(tmp, "given_config.yaml")
                cfg.dump(resolved)
            result = export(path, os.path.join(tmp, "export"), config=resolved)
            if cfg is None:
                cfg = load_config(result.config, overrides)
            config_path = config or result.config_source
            model = build_model(cfg, weights=result.weights)
        weights = result.checkpoint
    return LoadedCheckpoint(model=model.to(device).eval(), cfg=cfg, weights=weights, config=str(config_path),
                            kind=kind)

"""``mmvit.load``: a trained model from any checkpoint, with its config, ready for evaluation.

Accepted (see :func:`mmvit.checkpoint.resolve`): a weights file (``model.safetensors`` or a ``.pt/.pth``
state dict; the config is ``config`` or the ``config.yaml`` beside it), a run directory holding
``model.safetensors``, or a DeepSpeed checkpoint (a tag dir, a save dir, or a run dir with
``checkpoints/``: its newest complete checkpoint). A DeepSpeed checkpoint of any ZeRO stage is consolidated
to fp32 (``mmvit.export.export``) in a temporary folder; its config comes from ``config``, else from the
checkpoint's client state or a ``config.yaml`` next to it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterable

import torch

from mmvit import checkpoint as ckpt
from mmvit.config import Config, load_config
from mmvit.data.classes import ClassTables, resolve_class_tables, tables_of

log = logging.getLogger("mmvit.loading")


@dataclasses.dataclass
class Loaded:
    model: torch.nn.Module
    cfg: Config
    weights: str         # the file the weights came from (the tag dir for DeepSpeed checkpoints)
    config: str          # the config file that was read
    kind: str            # "weights" or "deepspeed"
    tables: ClassTables | None = None  # the run's class table of every task

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per task."""
        return {t: list(table.names) for t, table in (self.tables or {}).items()}

    @property
    def preprocess(self) -> dict:
        """The data section the model was trained with: normalisation, patch sizes, frames, resolution (what
        evaluation and :meth:`predict` read files with)."""
        return dict(self.cfg.get("data") or {})

    def predict(self, files, *, task: str | None = None, topk: int = 5, views: str = "full", **settings) -> list:
        """Top-``topk`` (class, probability) of every file, per task (see :mod:`mmvit.predict`). Files that
        cannot be read are left out and logged; ``mmvit.predict.predict`` also returns them."""
        from mmvit.predict import PredictSettings, predict

        device = next(self.model.parameters()).device
        out = predict(self.model, self.cfg, self.tables, [files] if isinstance(files, str) else list(files),
                      PredictSettings(topk=topk, task=task, views=views, **settings), device=device)
        for f in out["failures"]:
            log.warning("cannot predict %s: %s (%s)", f["path"], f["cause"], f["detail"])
        return out["predictions"]


def run_tables(cfg: dict, where: str) -> ClassTables | None:
    """The class tables of a run: from its config (``tasks.<task>.classes``, written by training), else
    rebuilt from its training split with a warning (configs written before class tables existed)."""
    tables = tables_of(cfg)
    if tables is not None or not (cfg.get("data") or {}):
        return tables
    try:
        tables = resolve_class_tables(cfg)
    except (ValueError, KeyError, FileNotFoundError) as e:
        log.warning("%s holds no class tables and they cannot be rebuilt from its training split (%s)", where, e)
        return None
    log.warning("%s holds no class tables (written before they existed): rebuilt from its training split", where)
    return tables


def load(checkpoint: str, config: str | None = None, overrides: Iterable[str] = (),
         device: torch.device | str = "cpu") -> Loaded:
    """Build the model of ``checkpoint`` with its weights loaded strictly, in eval mode, on ``device``.

    Args:
        checkpoint: see the module docstring.
        config: a config file to use instead of the one saved with the checkpoint.
        overrides: ``key=value`` config overrides (applied to whichever config is read).
        device: where the model goes.
    """
    from mmvit.export import export
    from mmvit.models.build import build_model

    overrides = list(overrides)
    kind, path = ckpt.resolve(checkpoint)
    cfg = load_config(config, overrides) if config is not None else None
    if kind == "weights":
        config_path = config or os.path.join(os.path.dirname(os.path.abspath(path)), ckpt.CONFIG_NAME)
        if cfg is None:
            if not os.path.isfile(config_path):
                raise FileNotFoundError(f"no config for {path}: {config_path} does not exist; pass --config")
            cfg = load_config(config_path, overrides)
        model = build_model(cfg, weights=path)
        weights = path
    else:
        with tempfile.TemporaryDirectory(prefix="mmvit_load_") as tmp:
            given = None
            if cfg is not None:  # export reads a file: hand it the merged, overridden config
                given = os.path.join(tmp, "given_config.yaml")
                cfg.dump(given)
            result = export(path, os.path.join(tmp, "export"), config=given)
            if cfg is None:
                cfg = load_config(result.config, overrides)
            config_path = config or result.config_source
            model = build_model(cfg, weights=result.weights)
        weights = result.checkpoint
    return Loaded(model=model.to(device).eval(), cfg=cfg, weights=weights, config=str(config_path), kind=kind,
                  tables=run_tables(cfg, str(config_path)))

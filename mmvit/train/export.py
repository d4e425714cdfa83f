"""The end of a run: the trained model's weights as ``model.safetensors`` (and ``model_ema.safetensors``)
with ``config.yaml`` and ``classes.json`` beside them, through :func:`mmvit.export.write_export`.

``mmvit.build_model(mmvit.load_config("RUN_DIR/config.yaml"), weights="RUN_DIR/model.safetensors")`` (or
``mmvit.load("RUN_DIR")``) rebuilds the trained model.
"""

from __future__ import annotations

from mmvit import checkpoint as ckpt
from mmvit import dist
from mmvit.export import write_export


def export_weights(ctx, state, export) -> list[str]:
    """Collective (ZeRO-3 gathers); rank 0 writes. Returns the written paths."""
    weights = ctx.engine.full_state_dict()
    prefix = ctx.engine.module.export_prefix()
    paths: list[str] = []
    if ctx.rank == 0:
        model_keys = {k[len(prefix):]: k for k in weights if k.startswith(prefix)}
        meta = {"step": str(state.step)}
        paths += write_export(ctx.run_dir, {k: weights[full] for k, full in model_keys.items()}, ctx.cfg,
                              metadata=meta, classes=ctx.classes)
        if ctx.ema is not None and export.ema:
            ema = {k: ctx.ema.shadow.get(full, weights[full]) for k, full in model_keys.items()}
            paths += write_export(ctx.run_dir, ema, ctx.cfg, name=ckpt.EMA_WEIGHTS_NAME,
                                  metadata={**meta, "ema_decay": str(ctx.ema.decay)})[:1]
    dist.barrier()
    return paths

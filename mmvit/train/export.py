"""Final weights as ``model.safetensors`` (and ``model_ema.safetensors``) with ``config.yaml`` beside them.

``mmvit.build_model(mmvit.load_config("RUN_DIR/config.yaml"), weights="RUN_DIR/model.safetensors")`` rebuilds
the trained model: safetensors holds tensors only, so loading runs no pickled code.
"""

from __future__ import annotations

import os

from mmvit.train import engine as ds


def export_weights(ctx, state, export) -> list[str]:
    """Collective (ZeRO-3 gathers); rank 0 writes. Returns the written paths."""
    from safetensors.torch import save_file

    weights = ds.full_state_dict(ctx.engine)
    paths = []
    if ctx.rank == 0:
        meta = {"step": str(state.step), "format": "pt"}
        path = os.path.join(ctx.run_dir, "model.safetensors")
        save_file({k: v.contiguous() for k, v in weights.items()}, path, metadata=meta)
        paths.append(path)
        if ctx.ema is not None and export.ema:
            ema = {k: ctx.ema.shadow.get(k, v).detach().float().cpu().contiguous() for k, v in weights.items()}
            path = os.path.join(ctx.run_dir, "model_ema.safetensors")
            save_file(ema, path, metadata={**meta, "ema_decay": str(ctx.ema.decay)})
            paths.append(path)
        ctx.cfg.dump(os.path.join(ctx.run_dir, "config.yaml"))
        paths.append(os.path.join(ctx.run_dir, "config.yaml"))
    ds.barrier()
    return paths

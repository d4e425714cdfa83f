"""timm's ViT layout (``timm.models.vision_transformer``, Dosovitskiy et al. 2021) to mmvit's NaViT trunk.

What a timm ViT computes, and where it lands in mmvit:

- ``patch_embed.proj`` (conv ``[D, C, p, p]``, stride p) -> ``tokenizer`` through its ``load_2d``: copied,
  PI-resized (FlexiViT) for another patch size, or inflated (ViViT) into a tubelet kernel.
- ``cls_token [1, 1, D]`` and ``pos_embed [1, 1 + gh*gw, D]``: timm concatenates the class token in front
  of the patches, then adds ``pos_embed`` to all of them (original ViT/DeiT layout); with
  ``no_embed_class`` (``pos_embed [1, gh*gw, D]``) it adds the grid to the patches only. mmvit gives the
  class token no position embedding, so ``pos_embed[:, 0]`` is folded into ``cls_token``; the grid goes to
  ``grid2d``'s ``grid [gh, gw, D]``, resampled per example like timm's ``dynamic_img_size`` (bicubic,
  antialiased, by default).
- ``blocks.N``: pre-LN (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``), LayerNorm eps 1e-6, exact GELU,
  ``qkv`` laid out ``[3, heads, head_dim]`` along its output: the same names and layout in mmvit. With
  ``qkv_bias=False`` the qkv bias is absent and mmvit's is set to zero. LayerScale (``ls1/ls2.gamma``,
  DeiT III) is folded into ``attn.proj`` and ``mlp.fc2``.
- ``norm`` -> ``norm``; ``head`` -> ``head.fc``; ``attn_pool`` (``global_pool='map'``, e.g. SigLIP) -> ``pool``
  (the latent query is ``pool.probe``).

Not representable, hence reported as ignored: register tokens, ``fc_norm`` (timm's norm after average
pooling), ``norm_pre`` (CLIP), per-block extra norms.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Sequence

import torch
import torch.nn as nn

from mmvit.models.variants import decode_variant
from mmvit.pretrained.load import ConversionPlan

_BLOCK_MODULES = ("norm1", "attn.qkv", "attn.q_norm", "attn.k_norm", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_POOL_MODULES = ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2")
_LAYER_SCALE = {"ls1": "attn.proj", "ls2": "mlp.fc2"}
_UNSUPPORTED = {
    "reg_token": "mmvit has no register tokens: the model's outputs differ from the checkpoint's",
    "fc_norm": "timm's norm after average pooling has no place in mmvit (it normalizes before pooling)",
    "norm_pre": "mmvit has no norm before the blocks (CLIP's norm_pre)",
}
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


def _grid_of(length: int, n_prefix: int, grid_size: Sequence[int] | None, model: nn.Module
             ) -> tuple[int, int, int]:
    """``(gh, gw, prefix entries in pos_embed)`` for a ``pos_embed`` of ``length`` entries."""
    candidates = [length - n_prefix, length] if n_prefix else [length]  # class entry included, or not
    if grid_size is not None:
        gh, gw = (int(grid_size[0]), int(grid_size[1]))
        if gh * gw not in candidates:
            raise ValueError(f"pos_embed has {length} entries, which a {gh}x{gw} grid with {n_prefix} prefix "
                             f"token(s) does not explain")
        return gh, gw, length - gh * gw
    model_grid = getattr(getattr(model, "pos_embed", None), "grid", None)
    if model_grid is not None and model_grid.shape[0] * model_grid.shape[1] in candidates:
        gh, gw = int(model_grid.shape[0]), int(model_grid.shape[1])
        return gh, gw, length - gh * gw
    for n in candidates:
        side = math.isqrt(n)
        if side * side == n:
            return side, side, length - n
    raise ValueError(f"pos_embed has {length} entries: not a square grid; pass grid_size=(gh, gw)")


def convert_timm(state: dict[str, torch.Tensor], model: nn.Module, *,
                 grid_size: Sequence[int] | None = None) -> ConversionPlan:
    """Map a timm ViT state dict onto ``model``'s keys (shapes are checked by ``apply_plan``).

    Args:
        grid_size: the checkpoint's native patch grid ``(gh, gw)``, needed only when it is not square and
            the model's ``grid2d`` does not have it.
    """
    plan = ConversionPlan()
    for leaf in ("weight", "bias"):
        if f"patch_embed.proj.{leaf}" in state:
            plan.add(f"tokenizer.{leaf}", state[f"patch_embed.proj.{leaf}"], f"patch_embed.proj.{leaf}")
    _convert_tokens(state, model, plan, grid_size)

    for key, value in state.items():
        head, _, rest = key.partition(".")
        if key in ("cls_token", "pos_embed") or key.startswith("patch_embed.proj."):
            continue
        if head in _UNSUPPORTED:
            plan.skip(key, _UNSUPPORTED[head])
        elif head == "blocks":
            name = rest.partition(".")[2]  # without the block index
            module = name.rpartition(".")[0]
            if module in _BLOCK_MODULES:
                plan.add(key, value, key)
            elif module not in _LAYER_SCALE:
                plan.skip(key, f"timm block module {module!r} has no mmvit equivalent")
        elif head == "norm":
            plan.add(key, value, key)
        elif head == "head" and rest in ("weight", "bias"):
            plan.add(f"head.fc.{rest}", value, key)
        elif key == "attn_pool.latent":
            if value.shape[1] == 1:
                plan.add("pool.probe", value.reshape(-1), key, note="timm's attn_pool.latent [1, 1, D]")
            else:
                plan.skip(key, f"{value.shape[1]} latent queries; mmvit's MAP pool has one")
        elif head == "attn_pool":
            module = rest.rpartition(".")[0]
            if module in _POOL_MODULES:
                plan.add(f"pool.{rest}", value, key)
            else:
                plan.skip(key, f"timm attn_pool module {module!r} has no mmvit equivalent")
    _fold_layer_scale(state, plan)
    return plan


def _convert_tokens(state: dict[str, torch.Tensor], model: nn.Module, plan: ConversionPlan,
                    grid_size: Sequence[int] | None) -> None:
    cls, pos, reg = state.get("cls_token"), state.get("pos_embed"), state.get("reg_token")
    n_prefix = (cls is not None) + (int(reg.shape[1]) if reg is not None else 0)
    pos_prefix = 0
    if pos is not None:
        gh, gw, pos_prefix = _grid_of(int(pos.shape[1]), n_prefix, grid_size, model)
        grid = pos[0, pos_prefix:].reshape(gh, gw, -1)                       # [gh, gw, D], row-major
        plan.add("pos_embed.grid", grid, "pos_embed", note=f"the checkpoint's {gh}x{gw} grid")
        if not hasattr(getattr(model, "pos_embed", None), "grid"):
            kind = (getattr(getattr(model, "cfg", None), "pos_embed", None) or {}).get("type")
            plan.skip("pos_embed", f"the model's position embedding is {kind!r}, not grid2d")
    if cls is None:
        return
    value, sources, note = cls.reshape(-1), ("cls_token",), ""
    if pos_prefix:
        # timm: cat([cls, patches]) + pos_embed, so the class token always carries pos_embed[:, 0].
        value, sources = value + pos[0, 0], ("cls_token", "pos_embed")
        note = "plus pos_embed[:, 0], which timm adds to the class token"
    plan.add("cls_token", value, *sources, note=note)
    has_cls = getattr(model, "cls_token", None) is not None
    if pos_prefix and has_cls != hasattr(getattr(model, "pos_embed", None), "grid"):
        used = "the class-token entry" if has_cls else "the grid"
        plan.remarks.append(f"pos_embed: only {used} fits the model")


def _fold_layer_scale(state: dict[str, torch.Tensor], plan: ConversionPlan) -> None:
    """``x + gamma * (W h + b)`` is ``x + (gamma W) h + gamma b``: fold LayerScale into the projection."""
    for key, gamma in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(ls[12])\.gamma", key)
        if not m:
            continue
        target = f"blocks.{m[1]}.{_LAYER_SCALE[m[2]]}"
        if f"{target}.weight" not in plan.entries:
            plan.skip(key, f"no {target}.weight to fold it into")
            continue
        for leaf, scale in (("weight", gamma[:, None]), ("bias", gamma)):
            entry = plan.entries.get(f"{target}.{leaf}")
            if entry is not None:
                plan.add(f"{target}.{leaf}", entry.tensor * scale, *entry.sources, key,
                         note=f"LayerScale {key} folded in")


def timm_vit_config(variant: str = "B/16", *, num_classes: int = 0, img_size: int | Sequence[int] | None = None,
                    pool: Literal["cls", "map"] | None = None, interpolation: Literal["bicubic", "bilinear"] = "bicubic",
                    weights: str | None = None, **overrides) -> dict:
    """The ``model:`` dict of an mmvit trunk that computes a timm ViT.

    Args:
        variant: ``"S/16"`` style, or a timm name such as ``"vit_small_patch16_224"`` or
            ``"vit_base_patch16_siglip_224"`` (its image size and pooling are then the defaults).
        num_classes: head size; 0 for pooled features. A checkpoint head of another size is initialised.
        img_size: the checkpoint's native resolution (int or ``(h, w)``, default 224): its position grid.
        pool: ``cls`` for class-token ViTs (``global_pool='token'``, the default), ``map`` for
            attention-pooled ones (``global_pool='map'``, no class token, e.g. SigLIP).
        interpolation: how the grid is resampled for other resolutions; timm's ``dynamic_img_size``
            uses bicubic with antialiasing.
        weights: a timm checkpoint; sets ``init_from: {path: weights, format: timm}``.
        overrides: any other ``model:`` key (``tokenizer={"type": "central_frame", "frames": 2}`` for
            video, ``depth``, ``drop_path``...). A dict with the same ``type`` is merged into the default.
    """
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(siglip_)?(\d+)", variant)
    if m:
        variant = f"{_TIMM_SIZES[m[1]]}/{m[2]}"
        img_size = int(m[4]) if img_size is None else img_size
        pool = ("map" if m[3] else "cls") if pool is None else pool
    patch = int(overrides.get("patch_size") or decode_variant(variant)["patch_size"])
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size or (224, 224))
    if h % patch or w % patch:
        raise ValueError(f"img_size {h}x{w} is not a multiple of the patch size {patch}")
    cfg: dict = {
        "type": "navit", "variant": variant, "bias": True, "qk_norm": False, "norm_eps": 1e-6,
        "tokenizer": {"type": "patch2d"},
        "pos_embed": {"type": "grid2d", "grid_size": [h // patch, w // patch], "mode": interpolation,
                      "antialias": True},
        "pool": pool or "cls", "num_classes": num_classes,
    }
    if weights is not None:
        cfg["init_from"] = {"path": weights, "format": "timm"}
    for key, value in overrides.items():
        old = cfg.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("type", old["type"]) == old["type"]:
            value = {**old, **value}
        cfg[key] = value
    return cfg

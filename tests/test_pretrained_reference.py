"""Helpers for the pretrained tests (no tests here): random timm-layout ViT state dicts and an independent,
slow forward with timm's semantics.

The reference follows timm's ``VisionTransformer`` step by step with plain tensor ops on one image: conv
patch embedding, class token concatenated in front, ``pos_embed`` added (resampled with ``F.interpolate``,
antialiased, when the patch grid differs from the checkpoint's, as ``resample_abs_pos_embed`` does),
pre-LN blocks (LayerNorm eps 1e-6, exact GELU, optional LayerScale), final norm, token 0 or attention
pooling. It shares no code with mmvit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def timm_state(width=48, depth=2, heads=3, mlp_ratio=4, patch=8, grid=(4, 4), in_chans=3, num_classes=7,
               qkv_bias=True, class_token=True, no_embed_class=False, global_pool="token", layer_scale=False,
               seed=0) -> dict[str, torch.Tensor]:
    """A ViT state dict in timm's layout with random weights (norms and biases random too)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def linear(prefix, n_out, n_in, bias=True):
        s[f"{prefix}.weight"] = r(n_out, n_in, std=n_in ** -0.5)
        if bias:
            s[f"{prefix}.bias"] = r(n_out)

    def norm(prefix):
        s[f"{prefix}.weight"], s[f"{prefix}.bias"] = 1 + r(width), r(width)

    s: dict[str, torch.Tensor] = {}
    hidden = int(width * mlp_ratio)
    s["patch_embed.proj.weight"] = r(width, in_chans, patch, patch, std=(in_chans * patch * patch) ** -0.5)
    s["patch_embed.proj.bias"] = r(width)
    if class_token:
        s["cls_token"] = r(1, 1, width, std=0.5)
    n_pos = grid[0] * grid[1] + (1 if class_token and not no_embed_class else 0)
    s["pos_embed"] = r(1, n_pos, width, std=0.5)
    for i in range(depth):
        p = f"blocks.{i}"
        norm(f"{p}.norm1")
        linear(f"{p}.attn.qkv", 3 * width, width, bias=qkv_bias)
        linear(f"{p}.attn.proj", width, width)
        norm(f"{p}.norm2")
        linear(f"{p}.mlp.fc1", hidden, width)
        linear(f"{p}.mlp.fc2", width, hidden)
        if layer_scale:
            s[f"{p}.ls1.gamma"], s[f"{p}.ls2.gamma"] = 0.5 + r(width), 0.5 + r(width)
    norm("norm")
    if global_pool == "map":
        s["attn_pool.latent"] = r(1, 1, width, std=0.5)
        linear("attn_pool.q", width, width)
        linear("attn_pool.kv", 2 * width, width)
        linear("attn_pool.proj", width, width)
        norm("attn_pool.norm")
        linear("attn_pool.mlp.fc1", hidden, width)
        linear("attn_pool.mlp.fc2", width, hidden)
    if num_classes:
        linear("head", num_classes, width)
    return s


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[H, n, d]`` each; softmax(q k^T / sqrt(d)) v."""
    weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return weights.softmax(-1) @ v


def reference_vit(s: dict[str, torch.Tensor], img: torch.Tensor, *, heads: int, grid: tuple[int, int],
                  interpolation: str = "bicubic", global_pool: str = "token", eps: float = 1e-6) -> torch.Tensor:
    """Pooled features ``[D]`` of a timm ViT for one image ``[C, H, W]``, timm semantics, plain ops."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], s[f"{p}.weight"], s.get(f"{p}.bias"), eps)  # noqa: E731
    lin = lambda x, p: F.linear(x, s[f"{p}.weight"], s.get(f"{p}.bias"))                        # noqa: E731
    w = s["patch_embed.proj.weight"]
    x = F.conv2d(img[None], w, s.get("patch_embed.proj.bias"), stride=w.shape[-1])[0]  # [D, h, w]
    dim, h, wd = x.shape
    x = x.flatten(1).T                                                                  # [h*w, D]
    pos = s["pos_embed"][0]
    has_cls = "cls_token" in s
    pos_prefix = pos.shape[0] - grid[0] * grid[1]
    grid_pos = pos[pos_prefix:]
    if (h, wd) != tuple(grid):
        g = grid_pos.T.reshape(1, dim, *grid)
        g = F.interpolate(g, size=(h, wd), mode=interpolation, antialias=True)
        grid_pos = g[0].reshape(dim, h * wd).T
    if pos_prefix:                     # original layout: concatenate, then add (class token gets pos[0])
        x = torch.cat([s["cls_token"][0], x]) + torch.cat([pos[:pos_prefix], grid_pos])
    else:                              # no_embed_class: add to the patches, then concatenate
        x = x + grid_pos
        x = torch.cat([s["cls_token"][0], x]) if has_cls else x
    n = x.shape[0]
    hd = dim // heads
    blocks = sorted({int(k.split(".")[1]) for k in s if k.startswith("blocks.")})
    for i in blocks:
        p = f"blocks.{i}"
        q, k, v = lin(ln(x, f"{p}.norm1"), f"{p}.attn.qkv").reshape(n, 3, heads, hd).permute(1, 2, 0, 3)
        o = lin(_attention(q, k, v).permute(1, 0, 2).reshape(n, dim), f"{p}.attn.proj")
        x = x + o * s.get(f"{p}.ls1.gamma", 1.0)
        m = lin(F.gelu(lin(ln(x, f"{p}.norm2"), f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
        x = x + m * s.get(f"{p}.ls2.gamma", 1.0)
    x = ln(x, "norm")
    if global_pool == "token":
        return x[0]
    tokens = x[1:] if has_cls else x
    q = lin(s["attn_pool.latent"][0], "attn_pool.q").reshape(1, heads, hd).transpose(0, 1)       # [H, 1, d]
    k, v = lin(tokens, "attn_pool.kv").reshape(-1, 2, heads, hd).permute(1, 2, 0, 3)            # [H, n, d]
    o = lin(_attention(q, k, v).transpose(0, 1).reshape(1, dim), "attn_pool.proj")
    o = o + lin(F.gelu(lin(ln(o, "attn_pool.norm"), "attn_pool.mlp.fc1")), "attn_pool.mlp.fc2")
    return o[0]

"""Model sizes, one table (ViT, Dosovitskiy et al. 2021; H/14 from the same paper).

``"B/16"`` decodes to width 768, depth 12, 12 heads, MLP 3072 and base patch size 16. Any field can be
overridden next to the variant in the config.
"""

from __future__ import annotations

# name: (width, depth, heads, mlp_dim)
SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
VARIANTS = ("Ti/16", "S/16", "B/16", "L/16", "H/14")


def decode_variant(variant: str) -> dict:
    """``"S/16"`` -> ``{"width": 384, "depth": 12, "heads": 6, "mlp_dim": 1536, "patch_size": 16}``."""
    try:
        size, patch = variant.split("/")
        width, depth, heads, mlp = SIZES[size]
        patch_size = int(patch)
    except (ValueError, KeyError):
        raise KeyError(f"unknown variant {variant!r}; sizes {list(SIZES)} with a patch size, e.g. {VARIANTS}") from None
    return {"width": width, "depth": depth, "heads": heads, "mlp_dim": mlp, "patch_size": patch_size}

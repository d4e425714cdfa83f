"""Built-in models and components; importing this registers them."""

from mmvit.models import pos_embed, tokenizers  # noqa: F401
from mmvit.models.navit import NaViT, NaViTConfig  # noqa: F401

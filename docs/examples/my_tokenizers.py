"""A user-side tokenizer, registered without touching mmvit (see docs/extending.md)."""

import torch
import torch.nn as nn

from mmvit.registry import TOKENIZERS


@TOKENIZERS.register("patch_mlp")
class PatchMLPTokenizer(nn.Module):
    """Each flattened patch goes through a small MLP instead of one linear map."""

    def __init__(self, dim: int, in_chans: int = 3, patch_size: int = 16, bias: bool = False, hidden: int = 64,
                 device=None, dtype=None):
        super().__init__()
        self.patch_size = patch_size
        n_in = in_chans * patch_size * patch_size
        self.net = nn.Sequential(nn.Linear(n_in, hidden, bias=bias, device=device, dtype=dtype), nn.GELU(),
                                 nn.Linear(hidden, dim, bias=bias, device=device, dtype=dtype))

    def forward(self, patches: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
        if tuple(patch_size) != (1, self.patch_size, self.patch_size):
            raise ValueError(f"patch_mlp works at patch size {self.patch_size} only, got {patch_size}")
        return self.net(patches)

"""A narrow transformer over the full grid: MAE's decoder and JEPA's predictor (one module for both).

MAE (He et al. 2022) decodes the encoded visible tokens together with a shared learned mask token at every
masked position, each with the decoder's own position embedding, through a light transformer (8 blocks x 512
wide in the paper; VideoMAE, Tong et al. 2022: 4 x 384) and a linear layer to pixels. I-JEPA and V-JEPA
(Assran et al. 2023; Bardes et al. 2024) do the same in feature space: a narrow predictor (I-JEPA ViT-H: 12 x
384) maps context tokens plus mask tokens at the targets to the target encoder's width.

Packed, the decoder runs on ``batch.full`` (every token of every example, see ``mmvit.pretrain.pack``) with the
trunk's :class:`~mmvit.models.navit.Block` and block-diagonal attention, so examples stay isolated here too.

Shapes: encoder tokens ``[B, L, D_enc]`` (parent batch layout, as ``NaViT.forward_tokens`` returns) ->
``N_f`` full tokens ``[N_f, W]`` -> blocks -> norm -> ``[M, out_dim]`` at the ``M`` masked tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn
import torch.utils.checkpoint

from mmvit.config import from_dict
from mmvit.models.attention import BACKENDS
from mmvit.models.layout import build_layout
from mmvit.models.navit import Block, NaViTConfig
from mmvit.packing import PackedBatch
from mmvit.registry import POS_EMBEDS


@dataclasses.dataclass
class PredictorConfig:
    """The ``decoder:`` / ``predictor:`` section. References: MAE 8 x 512 (16 heads), VideoMAE 4 x 384 (6 heads),
    I-JEPA / V-JEPA predictors 12 x 384; the defaults are small."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int | None = None              # 4 * width
    pos_embed: dict = dataclasses.field(default_factory=lambda: {"type": "learned", "fractional": True})
    attention: Literal["auto", "xformers", "segments", "dense"] = "auto"
    qk_norm: bool = True
    bias: bool = False
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    grad_checkpointing: bool = False

    def __post_init__(self):
        if self.mlp_dim is None:
            self.mlp_dim = 4 * self.width
        if self.attention not in BACKENDS:
            raise ValueError(f"decoder.attention must be one of {BACKENDS}, got {self.attention!r}")
        if self.depth < 1 or self.width < 1 or self.heads < 1:
            raise ValueError(f"decoder: width, depth and heads must be positive, got {self.width}, {self.depth}, "
                             f"{self.heads}")


@dataclasses.dataclass
class Predictions:
    """Outputs at the masked tokens of ``batch.full``, in its flat slot order.

    Attributes:
        values: ``[M, out_dim]``.
        example: ``[M]`` parent-batch example index of each masked token.
        slots: ``[M]`` flat index into ``batch.full``'s ``[B_f*L_f]`` slots (where its target lies).
    """

    values: torch.Tensor
    example: torch.Tensor
    slots: torch.Tensor


class MaskedPredictor(nn.Module):
    """Encoder tokens + mask tokens on the full grid -> predictions at the masked tokens.

    Args:
        in_dim: the encoder's width.
        out_dim: the prediction size: the patch size ``C*pt*ph*pw`` (MAE) or the target width (JEPA).
        cfg: :class:`PredictorConfig` fields.
    """

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None, **cfg):
        super().__init__()
        self.cfg = c = from_dict(PredictorConfig, cfg, "decoder")
        fk = {"device": device, "dtype": dtype}
        block_cfg = NaViTConfig(width=c.width, depth=c.depth, heads=c.heads, mlp_dim=c.mlp_dim, patch_size=1,
                                attention=c.attention, qk_norm=c.qk_norm, bias=c.bias, norm_eps=c.norm_eps)
        self.embed = nn.Linear(in_dim, c.width, bias=True, **fk)
        self.mask_token = nn.Parameter(torch.empty(c.width, **fk))
        self.pos_embed = POS_EMBEDS.build(c.pos_embed, dim=c.width, **fk)
        rates = torch.linspace(0, c.drop_path, c.depth).tolist() if c.depth > 1 else [c.drop_path]
        self.blocks = nn.ModuleList([Block(block_cfg, r, **fk) for r in rates])
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps, bias=c.bias, **fk)
        self.head = nn.Linear(c.width, out_dim, bias=True, **fk)
        self.grad_checkpointing = c.grad_checkpointing
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.startswith("pos_embed")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, tokens: torch.Tensor, batch: PackedBatch) -> Predictions:
        """``tokens``: ``[B, L, in_dim]`` encoder outputs on ``batch`` (a :func:`pack_masked` batch)."""
        full = batch.full
        if full is None or full.visible_index is None or full.parent_index is None:
            raise ValueError("the decoder needs a batch from mmvit.pretrain.pack_masked (batch.full is not set)")
        if tuple(tokens.shape[:2]) != tuple(batch.segment_ids.shape):
            raise ValueError(f"encoder tokens {tuple(tokens.shape)} do not match the batch {tuple(batch.shape)}")
        layout = build_layout(full.segment_ids)
        vis = full.visible_index.reshape(-1)[layout.real_index]                   # [N_f] parent slot or -1
        seen = vis >= 0
        seen_pos = torch.nonzero(seen, as_tuple=True)[0]
        src = self.embed(tokens.reshape(-1, tokens.shape[-1])[vis[seen_pos]])    # [N_vis, W]
        x = self.mask_token.to(src.dtype).expand(len(vis), -1).index_copy(0, seen_pos, src)   # [N_f, W]
        coords = full.coords.reshape(-1, 3)[layout.real_index]
        extent = full.grid[layout.patch_example]
        x = x + self.pos_embed(coords, extent, layout.patch_example, full.grid).to(x.dtype)
        if not torch.equal(layout.token_pos, torch.arange(len(x), device=x.device)):
            x = x.new_empty(x.shape).index_copy(0, layout.token_pos, x)          # trunk order
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, layout, use_reentrant=False)
            else:
                x = blk(x, layout)
        hidden = torch.nonzero(~seen, as_tuple=True)[0]                          # [M] masked, batch order
        values = self.head(self.norm(x[layout.token_pos[hidden]]))              # [M, out_dim]
        return Predictions(values=values, example=full.parent_index[layout.patch_example[hidden]],
                           slots=layout.real_index[hidden])

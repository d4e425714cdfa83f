"""NaViT trunk (Dehghani et al. 2023, "Patch n' Pack"): a pre-LN ViT over packed examples.

NaViT defaults: query-key normalization, no biases, MAP pooling, factorized position embeddings. With
``bias: true, qk_norm: false, pos_embed: grid2d, pool: cls`` the same trunk computes a classic ViT.

Data flow for a ``PackedBatch`` with ``E`` examples in ``B x L`` slots (``N`` real tokens, see layout.py):
    patches [B, L, P] -> gather real tokens [N, P] -> tokenizer [N, D] -> + position embedding
    -> (cls tokens in front of each example) -> blocks -> norm -> pool [E, D] -> head [E, classes]
Examples never exchange information: attention is block-diagonal, pooling and drop-path are per example.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn
import torch.utils.checkpoint

from mmvit.models.attention import Attention
from mmvit.models.layout import SeqLayout, build_layout
from mmvit.models.mlp import Mlp
from mmvit.models.pooling import ClsPool, MAPPool, MeanPool
from mmvit.models.variants import decode_variant
from mmvit.packing import PackedBatch
from mmvit.registry import HEADS, MODELS, POS_EMBEDS, TOKENIZERS
from mmvit.typed import from_dict, num


@dataclasses.dataclass
class NaViTConfig:
    """The ``model:`` section. ``variant`` gives the sizes; any field next to it overrides."""

    variant: str | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    patch_size: int | None = None          # base patch size of the tokenizer kernel
    in_chans: int = num(3, ge=1)
    num_classes: int = num(0, ge=0)        # one head of this many classes (0: forward() returns pooled features)
    tasks: dict[str, int] | None = None    # several label spaces: one head per task, {task: classes}
    tokenizer: dict = dataclasses.field(default_factory=lambda: {"type": "patch2d"})
    pos_embed: dict = dataclasses.field(default_factory=lambda: {"type": "learned"})
    pool: Literal["map", "mean", "cls"] = "map"
    head: dict = dataclasses.field(default_factory=lambda: {"type": "linear"})
    fc_norm: bool = False                  # LayerNorm on pooled features before the head
    attention: Literal["auto", "xformers", "segments", "dense", "flex"] = "auto"
    qk_norm: bool = True
    bias: bool = False
    drop_path: float = num(0.0, ge=0.0, lt=1.0)
    grad_checkpointing: bool = False
    norm_eps: float = num(1e-6, gt=0.0)
    init_from: dict | None = None          # {path, format}: pretrained weights, see mmvit.pretrained

    def __post_init__(self):
        # A section given without its type keeps the default type (``--set model.head.zero_init=false``).
        for key, default in (("tokenizer", "patch2d"), ("pos_embed", "learned"), ("head", "linear")):
            setattr(self, key, {"type": default, **dict(getattr(self, key) or {})})
        sizes = decode_variant(self.variant) if self.variant else {}
        for key, value in sizes.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.tasks is not None and self.num_classes:
            raise ValueError("model: give num_classes (one head) or tasks (one head per task), not both")
        for key in ("width", "depth", "heads", "mlp_dim", "patch_size"):
            if getattr(self, key) is None:
                raise ValueError(f"model: {key} is not set (give a variant such as 'S/16' or set {key})")
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")


def drop_path_mask(layout: SeqLayout, p: float, device, dtype=torch.float32) -> torch.Tensor:
    """Stochastic depth per example (not per row: packed examples are independent). ``[N, 1]`` in ``dtype``
    (the tokens' dtype: an fp32 mask would promote bf16 tokens to fp32)."""
    keep = (torch.rand(layout.num_examples, device=device) >= p).float() / (1.0 - p)
    return keep[layout.token_example][:, None].to(dtype)


class Block(nn.Module):
    def __init__(self, cfg: NaViTConfig, drop_path: float, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, bias=cfg.bias, **fk)
        self.attn = Attention(cfg.width, cfg.heads, qk_norm=cfg.qk_norm, bias=cfg.bias, eps=cfg.norm_eps,
                              backend=cfg.attention, **fk)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, bias=cfg.bias, **fk)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, bias=cfg.bias, **fk)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, layout: SeqLayout) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            m1 = drop_path_mask(layout, self.drop_path, x.device, x.dtype)
            m2 = drop_path_mask(layout, self.drop_path, x.device, x.dtype)
            x = x + m1 * self.attn(self.norm1(x), layout)
            return x + m2 * self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x), layout)
        return x + self.mlp(self.norm2(x))


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Zero-initialized linear classifier (big_vision's default: training starts from uniform logits)."""

    def __init__(self, dim: int, num_classes: int, bias: bool = True, zero_init: bool = True, device=None,
                 dtype=None):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes, bias=bias, device=device, dtype=dtype)
        if zero_init:
            nn.init.zeros_(self.fc.weight)
            if bias:
                nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@MODELS.register("navit")
class NaViT(nn.Module):
    def __init__(self, device=None, dtype=None, **cfg):
        super().__init__()
        self.cfg = c = from_dict(NaViTConfig, cfg, "model")
        fk = {"device": device, "dtype": dtype}
        tok_cfg = {"dim": c.width, "in_chans": c.in_chans, "patch_size": c.patch_size, "bias": c.bias,
                   **{k: v for k, v in c.tokenizer.items()}}
        self.tokenizer = TOKENIZERS.build(tok_cfg, **fk)
        self.pos_embed = POS_EMBEDS.build(c.pos_embed, dim=c.width, **fk)
        self.cls_token = nn.Parameter(torch.zeros(c.width, **fk)) if c.pool == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        rates = torch.linspace(0, c.drop_path, c.depth).tolist() if c.depth > 1 else [c.drop_path]
        self.blocks = nn.ModuleList([Block(c, r, **fk) for r in rates])
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps, bias=c.bias, **fk)
        if c.pool == "map":
            self.pool = MAPPool(c.width, c.heads, c.mlp_dim, bias=c.bias, eps=c.norm_eps, **fk)
        else:
            self.pool = MeanPool() if c.pool == "mean" else ClsPool()
        # Bounds the pooled features the head sees. Without it, a small model with classes that never
        # occur together (the demo's image and video labels) sat at the label prior for 1,000+ steps:
        # pushing impossible classes down is an unbounded, easy direction that dominates Adam's updates.
        self.fc_norm = nn.LayerNorm(c.width, eps=c.norm_eps, bias=c.bias, **fk) if c.fc_norm else None
        self.head = HEADS.build(c.head, dim=c.width, num_classes=c.num_classes, **fk) if c.num_classes else None
        # One head per task (Omnivore, Girdhar et al. 2022): each example's logits come from its task's head
        # only, so classes of different label spaces never share a softmax.
        self.task_heads = nn.ModuleDict({t: HEADS.build(c.head, dim=c.width, num_classes=k, **fk)
                                    for t, k in c.tasks.items()}) if c.tasks else None
        self.grad_checkpointing = c.grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT's trunc_normal(0.02) for the trunk's linear layers (timm); heads and MAP pooling init
        themselves (zero heads; LeCun-normal pooling projections, see ``MAPPool.reset_parameters``)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith(("head.", "task_heads.", "pool.q", "pool.kv",
                                                                  "pool.proj")):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- the interface the trainer, tools and weight import use -------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cls_token is not None else 0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay: norms, biases, position embeddings, tokens, probe."""
        skip = set()
        for name, p in self.named_parameters():
            if p.ndim <= 1 or name.startswith("pos_embed") or name in ("cls_token", "pool.probe"):
                skip.add(name)
        return skip

    def embed(self, batch: PackedBatch) -> tuple[torch.Tensor, SeqLayout]:
        """Tokens of the trunk ``[N, D]`` (position embeddings added, class tokens placed) and the layout."""
        layout = build_layout(batch.segment_ids, prefix=self.num_prefix_tokens)
        patches = batch.patches.reshape(-1, batch.patches.shape[-1])[layout.real_index]   # [Np, P]
        coords = batch.coords.reshape(-1, 3)[layout.real_index]                            # [Np, 3]
        x = self.tokenizer(patches, tuple(batch.patch_size))                               # [Np, D]
        extent = batch.grid[layout.patch_example]
        x = x + self.pos_embed(coords, extent, layout.patch_example, batch.grid).to(x.dtype)
        if self.num_prefix_tokens == 0 and torch.equal(layout.token_pos, torch.arange(len(x), device=x.device)):
            return x, layout
        out = x.new_empty(layout.num_tokens, x.shape[1])
        out = out.index_copy(0, layout.token_pos, x)
        if self.cls_token is not None:
            cls = self.cls_token.to(x.dtype).expand(layout.num_examples, -1)
            out = out.index_copy(0, layout.prefix_pos[:, 0], cls)
        return out, layout

    def trunk(self, x: torch.Tensor, layout: SeqLayout, last: int = 1) -> torch.Tensor:
        """The blocks and the final norm: ``[N, D]`` -> ``[N, D]``; with ``last = k`` the final norm of each of
        the last ``k`` blocks' outputs, concatenated in block order: ``[N, k * D]`` (features for probes that
        read several blocks, as DINOv2's linear probes read the last 4)."""
        if not 1 <= last <= max(1, len(self.blocks)):
            raise ValueError(f"last={last}: the trunk has {len(self.blocks)} blocks")
        outs = []
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, layout, use_reentrant=False)
            else:
                x = blk(x, layout)
            if last > 1 and i >= len(self.blocks) - last:
                outs.append(self.norm(x))
        return torch.cat(outs, dim=-1) if last > 1 else self.norm(x)

    def forward_tokens(self, batch: PackedBatch, last_blocks: int = 1) -> torch.Tensor:
        """Final-norm patch tokens back in the batch layout ``[B, L, D]`` (zeros at padding); ``last_blocks =
        k``: the last ``k`` blocks' normed outputs side by side, ``[B, L, k * D]``."""
        x, layout = self.embed(batch)
        x = self.trunk(x, layout, last_blocks)
        b, length = layout.batch_shape
        out = x.new_zeros(b * length, x.shape[1]).index_copy(0, layout.real_index, x[layout.token_pos])
        return out.view(b, length, -1)

    def forward_features(self, batch: PackedBatch) -> torch.Tensor:
        """Pooled features ``[E, D]`` in the order of ``batch.example_ids``."""
        x, layout = self.embed(batch)
        return self.pool(self.trunk(x, layout), layout)

    @property
    def task_classes(self) -> dict[str, int]:
        """Classes of each task's head, in task order (one task ``default`` for a single head)."""
        if self.task_heads is not None:
            return dict(self.cfg.tasks)
        return {"default": self.cfg.num_classes} if self.head is not None else {}

    def forward_head(self, features: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """``[E, D]`` pooled features -> logits. With one head per task, ``tasks [E]`` picks each example's
        head; the result is ``[E, max classes]`` with ``-inf`` beyond the classes of an example's task (so
        argmax and softmax never leave the task); slice ``[:, :classes]`` for one task's logits."""
        if self.fc_norm is not None:
            features = self.fc_norm(features)
        if self.task_heads is None:
            return features if self.head is None else self.head(features)
        if tasks is None:
            if len(self.task_heads) != 1:
                raise ValueError(f"this model has heads for tasks {list(self.task_heads)}: the batch must give tasks")
            tasks = torch.zeros(len(features), dtype=torch.long, device=features.device)
        width = max(self.cfg.tasks.values())
        out = features.new_full((len(features), width), float("-inf"))
        for t, head in enumerate(self.task_heads.values()):
            # Every head runs on every batch (a few E x classes products), so that each of its parameters
            # takes part in every backward on every rank: a head left out of one rank's graph would give the
            # ranks different gradient buckets to all-reduce (DeepSpeed's ZeRO reductions then mismatch).
            logits = head(features).to(out.dtype)
            rows = (tasks == t)[:, None]
            out[:, :logits.shape[1]] = torch.where(rows, logits, out[:, :logits.shape[1]])
        return out

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Logits ``[E, classes]`` (features without a head) in ``batch.example_ids`` order; with one head
        per task see :meth:`forward_head`."""
        return self.forward_head(self.forward_features(batch), batch.tasks)

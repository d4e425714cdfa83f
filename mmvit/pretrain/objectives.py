"""Pretraining objectives without labels over packed images and videos: MAE and JEPA.

- :class:`MAE` (He et al. 2022; VideoMAE, Tong et al. 2022): the encoder sees the visible tokens, the decoder
  predicts the pixels of every masked patch (or tubelet), normalised per patch (``norm_pix_loss``: MAE's
  ``(x - mean) / sqrt(var + 1e-6)`` over the patch's ``C*pt*ph*pw`` values, unbiased variance). The loss is
  the MSE averaged over a patch's values, then over the example's masked tokens. VideoMAE normalises each
  channel of a tubelet separately; here one rule covers patches and tubelets.
- :class:`JEPA` (I-JEPA, Assran et al. 2023; V-JEPA, Bardes et al. 2024): the context encoder sees the visible
  tokens, the predictor predicts the target encoder's layer-normalised features (``F.layer_norm`` without
  affine) at the masked tokens; ``|pred - target|^p / p`` (V-JEPA's loss, L1 for ``p = 1``) averaged over the
  feature width, then over the example's masked tokens. The target encoder is an exponential moving average of
  the context encoder (momentum 0.996 -> 1.0, linear over training, as V-JEPA), run on the full packing.

Both return per-example losses in the parent batch's example order, with the masked-token count of each
example as its weight, so the trainer's token-weighted global mean is MAE's mean over all masked tokens.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.config import from_dict
from mmvit.packing import PackedBatch
from mmvit.pretrain.decoder import MaskedPredictor, Predictions
from mmvit.pretrain.pack import masked_fraction


@dataclasses.dataclass
class ObjectiveOutput:
    """Attributes:
        losses: ``[E]`` fp32 per-example losses, in the parent batch's example order.
        weights: ``[E]`` masked tokens of each example (for a token-weighted mean).
        metrics: detached scalars to log.
    """

    losses: torch.Tensor
    weights: torch.Tensor
    metrics: dict[str, torch.Tensor]


def _build_encoder(cfg: dict, device, dtype) -> nn.Module:
    from mmvit.models.build import build_model

    encoder = build_model(dict(cfg), device=device, dtype=dtype)
    if getattr(encoder, "head", None) is not None:
        raise ValueError("the pretraining encoder must be built with num_classes: 0 (no head)")
    if not hasattr(encoder, "forward_tokens"):
        raise TypeError(f"{type(encoder).__name__} has no forward_tokens(batch); pretraining needs token outputs")
    return encoder


def per_example_mean(values: torch.Tensor, example: torch.Tensor, num_examples: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values [M]`` per example (``example [M]``) and the count of each: ``([E], [E])``."""
    count = torch.bincount(example, minlength=num_examples)
    total = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(0, example, values)
    return total / count.clamp(min=1).to(values.dtype), count.to(values.dtype)


def norm_pix(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's per-patch normalisation of ``[M, P]`` pixels: ``(x - mean) / sqrt(var + eps)``, unbiased var."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def _check_masked(batch: PackedBatch) -> PackedBatch:
    if batch.full is None:
        raise ValueError("a pretraining objective needs a batch from mmvit.pretrain.pack_masked (batch.full is None)")
    return batch.full


@dataclasses.dataclass
class MAEConfig:
    """``encoder``: a ``model:`` section (``num_classes: 0``); ``decoder``: a :class:`PredictorConfig`."""

    encoder: dict
    decoder: dict = dataclasses.field(default_factory=dict)
    norm_pix_loss: bool = True
    norm_pix_eps: float = 1e-6  # MAE's


class MAE(nn.Module):
    """Masked autoencoder over packed batches; ``forward(batch) -> ObjectiveOutput``."""

    def __init__(self, device=None, dtype=None, **cfg):
        super().__init__()
        self.cfg = c = from_dict(MAEConfig, cfg, "objective")
        self.encoder = _build_encoder(c.encoder, device, dtype)
        tok = self.encoder.tokenizer
        self.patch_size = tuple(tok.base_patch_size)                   # (pt, ph, pw) the decoder predicts
        self.patch_dim = tok.in_chans * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.decoder = MaskedPredictor(self.encoder.cfg.width, self.patch_dim, device=device, dtype=dtype,
                                       **c.decoder)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | \
               {f"decoder.{n}" for n in self.decoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    def export_encoder(self) -> nn.Module:
        return self.encoder

    def predict(self, batch: PackedBatch) -> Predictions:
        full = _check_masked(batch)
        if tuple(batch.patch_size) != self.patch_size or full.patches.shape[-1] != self.patch_dim:
            raise ValueError(f"MAE predicts pixels of {self.patch_size} patches ({self.patch_dim} values); the batch "
                             f"was packed at patch size {tuple(batch.patch_size)} ({full.patches.shape[-1]} values)")
        return self.decoder(self.encoder.forward_tokens(batch), batch)

    def targets(self, batch: PackedBatch, slots: torch.Tensor) -> torch.Tensor:
        """``[M, P]`` fp32 pixel targets at ``slots`` of ``batch.full``."""
        full = _check_masked(batch)
        target = full.patches.reshape(-1, full.patches.shape[-1])[slots].float()
        return norm_pix(target, self.cfg.norm_pix_eps) if self.cfg.norm_pix_loss else target

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        pred = self.predict(batch)
        target = self.targets(batch, pred.slots)
        per_token = (pred.values.float() - target).square().mean(-1)                  # [M]
        losses, weights = per_example_mean(per_token, pred.example, batch.num_examples)
        metrics = {"masked_fraction": masked_fraction(batch).mean().detach()}
        return ObjectiveOutput(losses=losses, weights=weights, metrics=metrics)


@dataclasses.dataclass
class JEPAConfig:
    """``encoder``: a ``model:`` section (``num_classes: 0``); ``predictor``: a :class:`PredictorConfig`."""

    encoder: dict
    predictor: dict = dataclasses.field(default_factory=dict)
    momentum: tuple[float, float] = (0.996, 1.0)  # I-JEPA's and V-JEPA's EMA ramp
    loss_exp: float = 1.0                          # V-JEPA: mean(|pred - target|^p) / p; 1 is L1

    def __post_init__(self):
        self.momentum = tuple(float(m) for m in self.momentum)  # type: ignore[assignment]
        if len(self.momentum) != 2 or not 0.0 <= self.momentum[0] <= self.momentum[1] <= 1.0:
            raise ValueError(f"objective.momentum must be [start, end] with 0 <= start <= end <= 1, got "
                             f"{self.momentum}")
        if self.loss_exp <= 0:
            raise ValueError(f"objective.loss_exp must be positive, got {self.loss_exp}")


class JEPA(nn.Module):
    """Joint-embedding predictive pretraining over packed batches; ``forward(batch) -> ObjectiveOutput``.

    ``target_encoder`` lives inside the module with ``requires_grad=False``: checkpoints save and resume it with
    the model, and an optimizer built from parameters that require gradients never sees it. Call
    :meth:`update_target` after each applied optimizer step.
    """

    def __init__(self, device=None, dtype=None, **cfg):
        super().__init__()
        self.cfg = c = from_dict(JEPAConfig, cfg, "objective")
        self.encoder = _build_encoder(c.encoder, device, dtype)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        self.target_encoder.eval()
        width = self.encoder.cfg.width
        self.predictor = MaskedPredictor(width, width, device=device, dtype=dtype, **c.predictor)

    def train(self, mode: bool = True) -> "JEPA":
        """The target encoder stays in eval mode (no drop-path): its features are the targets."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | \
               {f"predictor.{n}" for n in self.predictor.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.predictor.set_grad_checkpointing(enable)

    def export_encoder(self) -> nn.Module:
        """The target encoder (V-JEPA evaluates it; it is the smoother of the two)."""
        return self.target_encoder

    def momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum at ``step`` of ``total_steps``: linear from ``momentum[0]`` to ``momentum[1]``."""
        start, end = self.cfg.momentum
        frac = min(max(step, 0), total_steps) / max(1, total_steps)
        return start + (end - start) * frac

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target = m * target + (1 - m) * encoder`` for every parameter and floating buffer."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        online = dict(self.encoder.named_parameters())
        online.update({n: b for n, b in self.encoder.named_buffers() if b.dtype.is_floating_point})
        for name, t in list(self.target_encoder.named_parameters()) + list(self.target_encoder.named_buffers()):
            if t.dtype.is_floating_point:
                t.mul_(momentum).add_(online[name].detach().to(t.dtype), alpha=1.0 - momentum)

    @torch.no_grad()
    def targets(self, batch: PackedBatch, slots: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` fp32 layer-normalised target-encoder features at ``slots`` of ``batch.full``."""
        full = _check_masked(batch)
        h = self.target_encoder.forward_tokens(full)                                  # [B_f, L_f, D]
        h = h.reshape(-1, h.shape[-1])[slots].float()
        return F.layer_norm(h, (h.shape[-1],))

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        _check_masked(batch)
        pred = self.predictor(self.encoder.forward_tokens(batch), batch)
        target = self.targets(batch, pred.slots)
        p = self.cfg.loss_exp
        per_token = (pred.values.float() - target).abs().pow(p).mean(-1) / p            # [M]
        losses, weights = per_example_mean(per_token, pred.example, batch.num_examples)
        values = pred.values.detach().float()
        metrics = {"masked_fraction": masked_fraction(batch).mean().detach(),
                   # Spread of predictions across tokens; near zero means the predictor collapsed.
                   "pred_std": values.std(0).mean() if len(values) > 1 else values.new_zeros(())}
        return ObjectiveOutput(losses=losses, weights=weights, metrics=metrics)

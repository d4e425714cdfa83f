"""Pretraining objectives without labels over packed images and videos: ``mae`` and ``jepa`` (registry
``OBJECTIVES``), trainer objectives like ``classification`` (:class:`mmvit.objectives.base.Objective`).

- :class:`MAE` (He et al. 2022; VideoMAE, Tong et al. 2022): the encoder sees the visible tokens, the decoder
  predicts the pixels of every masked patch (or tubelet), normalised per patch (``norm_pix_loss``: MAE's
  ``(x - mean) / sqrt(var + 1e-6)`` over the patch's ``C*pt*ph*pw`` values, unbiased variance). The loss is
  the MSE averaged over a patch's values, then over the example's masked tokens. ``norm_pix_per_channel``
  normalises each colour channel of a patch or tubelet separately, as VideoMAE does.
- :class:`JEPA` (I-JEPA, Assran et al. 2023; V-JEPA, Bardes et al. 2024): the context encoder sees the visible
  tokens, the predictor predicts the target encoder's layer-normalised features (``F.layer_norm`` without
  affine) at the masked tokens; ``|pred - target|^p / p`` (V-JEPA's loss, L1 for ``p = 1``) averaged over the
  feature width, then over the example's masked tokens. The target encoder is an exponential moving average of
  the context encoder (momentum 0.996 -> 1.0, linear over training, as V-JEPA), run on the full packing.

The run's ``model:`` section is the encoder (``num_classes: 0``, no ``tasks``); the ``objective:`` section
holds the rest::

    objective: {type: mae, decoder: {width: 512, depth: 8, heads: 16}, mask: {video: {ratio: 0.9}}}

``mask`` is a :class:`~mmvit.pretrain.masking.MaskConfig` (preset ``mae`` or ``jepa`` by default, after the
objective); the trainer hands it to the loader workers, which plan each example's mask from its own seeded RNG
and pack with :func:`mmvit.pretrain.pack_masked`.

Losses come per example in the parent batch's example order; :meth:`token_weights` is each example's masked
token count (known from the batch before the forward), so ``train.loss_norm: tokens`` makes the trainer's
global mean MAE's mean over all masked tokens of the step. The encoder's pooling (and ``fc_norm``) take no part
in token outputs; they are frozen so that every optimised parameter gets a gradient on every rank.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvit.config import from_dict
from mmvit.objectives.base import Objective, ObjectiveOutput
from mmvit.packing import PackedBatch
from mmvit.pretrain.decoder import MaskedPredictor, Predictions
from mmvit.pretrain.masking import MaskConfig
from mmvit.pretrain.pack import masked_fraction
from mmvit.registry import OBJECTIVES

logger = logging.getLogger("mmvit.pretrain")

# Encoder parts that forward_tokens never reaches (pooling, the norm before the head).
UNUSED_PREFIXES = ("pool.", "fc_norm.")


def check_encoder(model: nn.Module) -> nn.Module:
    """The run's model as a pretraining encoder: no head, token outputs; its unused parts frozen."""
    if getattr(model, "head", None) is not None or getattr(model, "task_heads", None) is not None:
        raise ValueError("the pretraining encoder (the model: section) must have no head: set num_classes: 0 and "
                         "no tasks (fine-tune with a head later through model.init_from)")
    if not hasattr(model, "forward_tokens"):
        raise TypeError(f"{type(model).__name__} has no forward_tokens(batch); pretraining needs token outputs")
    for name, p in model.named_parameters():
        if name.startswith(UNUSED_PREFIXES):
            p.requires_grad_(False)
    return model


def per_example_mean(values: torch.Tensor, example: torch.Tensor, num_examples: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values [M]`` per example (``example [M]``) and the count of each: ``([E], [E])``."""
    count = torch.bincount(example, minlength=num_examples)
    total = torch.zeros(num_examples, dtype=values.dtype, device=values.device).index_add_(0, example, values)
    return total / count.clamp(min=1).to(values.dtype), count.to(values.dtype)


def masked_tokens(batch: PackedBatch) -> torch.Tensor:
    """``[E]`` masked tokens of each example (its full grid minus its visible tokens), parent order."""
    return batch.grid.long().prod(1) - batch.lengths


def _channel_groups(target: torch.Tensor, channels: int) -> torch.Tensor:
    """``[M, P]`` -> ``[M, channels, P / channels]`` (a view when ``target`` is contiguous): the values of
    each colour channel of a patch together, channel-major as :func:`mmvit.packing.patchify` flattens."""
    m, p = target.shape
    if p % channels:
        raise ValueError(f"{p} values per patch do not split into {channels} channels")
    return target.reshape(m, channels, p // channels)


def norm_pix_stats(target: torch.Tensor, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of ``[M, P]`` pixels per patch (``channels=1``) or per colour channel of each
    patch (``channels=C``: ``P = C * pt * ph * pw`` channel-major, as :func:`mmvit.packing.patchify` flattens);
    both ``[M, channels, 1]``, to broadcast over :func:`_channel_groups` of the values."""
    x = _channel_groups(target, channels)
    return x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)


def norm_pix(target: torch.Tensor, eps: float = 1e-6, channels: int = 1) -> torch.Tensor:
    """MAE's per-patch normalisation of ``[M, P]`` pixels: ``(x - mean) / sqrt(var + eps)``, unbiased var;
    with ``channels=C`` each colour channel of a patch is normalised on its own (VideoMAE's rule).

    The statistics stay ``[M, C, 1]`` (broadcast, no ``[M, P]`` copies), and the division runs in place in the
    one ``[M, P]`` temporary, except when ``target`` requires grad (autograd then needs the numerator).
    """
    mean, var = norm_pix_stats(target, channels)               # [M, C, 1]
    out = _channel_groups(target, channels) - mean             # [M, C, P/C], a new tensor
    std = (var + eps).sqrt()
    out = out / std if out.requires_grad else out.div_(std)
    return out.view(target.shape)


def unnorm_pix(values: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, channels: int = 1) -> torch.Tensor:
    """The inverse of :func:`norm_pix` for predictions ``values [M, P]`` of the patches ``target [M, P]``: back
    to pixels with each true patch's (or patch channel's) own mean and variance."""
    mean, var = norm_pix_stats(target, channels)
    return (_channel_groups(values, channels) * (var + eps).sqrt() + mean).view(values.shape)


class _SquaredErrorMean(torch.autograd.Function):
    """``(pred - target).square().mean(-1)``: ``[M, P]`` -> ``[M]``, the gradient with one ``[M, P]`` temporary.

    Autograd's backward of that expression builds the expanded mean gradient ``g / P``, ``d.pow(1)``, ``2 * d``
    and their product, each ``[M, P]`` (M masked tokens of P pixel values: megabytes per step). This one
    computes the same products, ``(2 * d) * (g / P)``, into a single tensor: the same values, bit for bit.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = pred - target                                                  # [M, P]
        ctx.save_for_backward(d)
        return d.square().mean(-1)                                         # [M]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (d,) = ctx.saved_tensors
        return (2 * d).mul_((grad / d.shape[-1])[:, None]), None


def squared_error_mean(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[M]`` mean over the last dim of ``(pred - target)^2`` for ``[M, P]`` inputs (MAE's per-token loss)."""
    if target.requires_grad or not pred.requires_grad or pred.dim() != 2:
        return (pred - target).square().mean(-1)
    return _SquaredErrorMean.apply(pred, target)


def _check_masked(batch: PackedBatch) -> PackedBatch:
    if batch.full is None:
        raise ValueError("a pretraining objective needs a batch from mmvit.pretrain.pack_masked (batch.full is None; "
                         "the trainer's loader packs so when the objective has a mask)")
    return batch.full


def _mask_config(mask: dict | MaskConfig | None, preset: str) -> MaskConfig:
    if isinstance(mask, MaskConfig):
        return mask
    return MaskConfig.from_dict({"preset": preset, **dict(mask or {})})


def _param_like(model: nn.Module) -> dict:
    p = next(model.parameters())
    return {"device": p.device, "dtype": p.dtype}


class _Masked(Objective):
    """What MAE and JEPA share: the encoder (``self.model``), a mask, masked-token weights."""

    uses_labels = False
    mask: MaskConfig

    def token_weights(self, batch: PackedBatch) -> torch.Tensor:
        _check_masked(batch)
        return masked_tokens(batch)

    def _sums(self, batch: PackedBatch) -> dict[str, torch.Tensor]:
        # Per-example sums: the loop reports sum / examples, the mean masked fraction of the step.
        return {"masked_fraction": masked_fraction(batch).sum().detach()}


@dataclasses.dataclass
class MAEConfig:
    """The ``objective:`` section of ``type: mae``."""

    decoder: dict = dataclasses.field(default_factory=dict)   # a PredictorConfig
    mask: dict | None = None                                   # a MaskConfig (preset mae)
    norm_pix_loss: bool = True
    norm_pix_eps: float = 1e-6  # MAE's
    # Normalise each colour channel of a patch on its own (VideoMAE) instead of the whole patch (MAE): the
    # target keeps each channel's pattern but not the patch's hue, so colour alone predicts less of it.
    norm_pix_per_channel: bool = False


@OBJECTIVES.register("mae")
class MAE(_Masked):
    """Masked autoencoder over packed batches around the encoder ``model``."""

    def __init__(self, model: nn.Module, **cfg):
        super().__init__()
        self.cfg = c = from_dict(MAEConfig, cfg, "objective")
        self.model = check_encoder(model)
        self.mask = _mask_config(c.mask, "mae")
        tok = model.tokenizer
        self.patch_size = tuple(tok.base_patch_size)                   # (pt, ph, pw) the decoder predicts
        self.patch_dim = tok.in_chans * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.decoder = MaskedPredictor(model.cfg.width, self.patch_dim, **_param_like(model), **c.decoder)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {f"decoder.{n}" for n in self.decoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    def predict(self, batch: PackedBatch) -> Predictions:
        full = _check_masked(batch)
        if tuple(batch.patch_size) != self.patch_size or full.patches.shape[-1] != self.patch_dim:
            raise ValueError(f"MAE predicts pixels of {self.patch_size} patches ({self.patch_dim} values); the batch "
                             f"was packed at patch size {tuple(batch.patch_size)} ({full.patches.shape[-1]} values)")
        return self.decoder(self.model.forward_tokens(batch), batch)

    def targets(self, batch: PackedBatch, slots: torch.Tensor) -> torch.Tensor:
        """``[M, P]`` fp32 pixel targets at ``slots`` of ``batch.full``."""
        full = _check_masked(batch)
        target = full.patches.reshape(-1, full.patches.shape[-1])[slots].float()
        return norm_pix(target, self.cfg.norm_pix_eps, self.norm_channels) if self.cfg.norm_pix_loss else target

    @property
    def norm_channels(self) -> int:
        """Groups of values ``norm_pix`` normalises separately: 1 (the patch) or the input channels."""
        return self.model.tokenizer.in_chans if self.cfg.norm_pix_per_channel else 1

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        pred = self.predict(batch)
        target = self.targets(batch, pred.slots)
        per_token = squared_error_mean(pred.values.float(), target)                   # [M]
        losses, _ = per_example_mean(per_token, pred.example, batch.num_examples)
        return ObjectiveOutput(losses=losses, sums=self._sums(batch))


@dataclasses.dataclass
class JEPAConfig:
    """The ``objective:`` section of ``type: jepa``."""

    predictor: dict = dataclasses.field(default_factory=dict)  # a PredictorConfig
    mask: dict | None = None                                   # a MaskConfig (preset jepa)
    momentum: tuple[float, float] = (0.996, 1.0)  # I-JEPA's and V-JEPA's EMA ramp over train.steps
    loss_exp: float = 1.0                          # V-JEPA: mean(|pred - target|^p) / p; 1 is L1

    def __post_init__(self):
        self.momentum = tuple(float(m) for m in self.momentum)  # type: ignore[assignment]
        if len(self.momentum) != 2 or not 0.0 <= self.momentum[0] <= self.momentum[1] <= 1.0:
            raise ValueError(f"objective.momentum must be [start, end] with 0 <= start <= end <= 1, got "
                             f"{self.momentum}")
        if self.loss_exp <= 0:
            raise ValueError(f"objective.loss_exp must be positive, got {self.loss_exp}")


def _storage(p: torch.Tensor) -> torch.Tensor:
    """The tensor that holds this rank's values of ``p``: under ZeRO-3 its partition (``ds_tensor``; a
    parameter and its EMA copy have the same shape, so the same partition), else the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


@OBJECTIVES.register("jepa")
class JEPA(_Masked):
    """Joint-embedding predictive pretraining around the context encoder ``model``.

    ``target_encoder`` is a submodule with ``requires_grad=False``: checkpoints save and resume it with the
    rest (DeepSpeed keeps frozen parameters in its module state and, under ZeRO >= 2, as frozen fragments), and
    the optimizer, built from parameters that require gradients, never sees it. :meth:`after_step` moves it
    towards the context encoder after every applied step; it is what the run exports.
    """

    def __init__(self, model: nn.Module, **cfg):
        super().__init__()
        self.cfg = c = from_dict(JEPAConfig, cfg, "objective")
        self.model = check_encoder(model)
        self.mask = _mask_config(c.mask, "jepa")
        self.target_encoder = copy.deepcopy(model)
        self.target_encoder.requires_grad_(False)
        self.target_encoder.eval()
        width = model.cfg.width
        self.predictor = MaskedPredictor(width, width, **_param_like(model), **c.predictor)
        self._warned_dtype = False

    def train(self, mode: bool = True) -> "JEPA":
        """The target encoder stays in eval mode (no drop-path): its features are the targets."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {f"predictor.{n}" for n in self.predictor.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
        self.predictor.set_grad_checkpointing(enable)

    def export_model(self) -> nn.Module:
        """The target encoder (V-JEPA evaluates it; it is the smoother of the two)."""
        return self.target_encoder

    def momentum(self, step: int, total_steps: int) -> float:
        """EMA momentum at ``step`` of ``total_steps``: linear from ``momentum[0]`` to ``momentum[1]``."""
        start, end = self.cfg.momentum
        frac = min(max(step, 0), total_steps) / max(1, total_steps)
        return start + (end - start) * frac

    def after_step(self, step: int, total_steps: int) -> None:
        self.update_target(self.momentum(step, total_steps))

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target = m * target + (1 - m) * encoder`` for every parameter and floating buffer."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        online = dict(self.model.named_parameters())
        online.update({n: b for n, b in self.model.named_buffers() if b.dtype.is_floating_point})
        for name, t in list(self.target_encoder.named_parameters()) + list(self.target_encoder.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            if t.dtype != torch.float32 and not self._warned_dtype:
                self._warned_dtype = True
                logger.warning(f"JEPA: the target encoder is in {t.dtype}; an EMA step of (1 - {momentum:.4f}) is "
                               f"mostly rounded away at this precision (train in fp32 for JEPA)")
            dst = _storage(t)
            dst.mul_(momentum).add_(_storage(online[name]).detach().to(dst.dtype), alpha=1.0 - momentum)

    @torch.no_grad()
    def targets(self, batch: PackedBatch, slots: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` fp32 layer-normalised target-encoder features at ``slots`` of ``batch.full``."""
        full = _check_masked(batch)
        h = self.target_encoder.forward_tokens(full)                                  # [B_f, L_f, D]
        h = h.reshape(-1, h.shape[-1])[slots].float()
        return F.layer_norm(h, (h.shape[-1],))

    def forward(self, batch: PackedBatch) -> ObjectiveOutput:
        _check_masked(batch)
        pred = self.predictor(self.model.forward_tokens(batch), batch)
        target = self.targets(batch, pred.slots)
        p = self.cfg.loss_exp
        per_token = (pred.values.float() - target).abs().pow(p).mean(-1) / p            # [M]
        losses, _ = per_example_mean(per_token, pred.example, batch.num_examples)
        values = pred.values.detach().float()
        # Spread of predictions across tokens (near zero: the predictor collapsed), weighted by examples.
        spread = values.std(0).mean() if len(values) > 1 else values.new_zeros(())
        return ObjectiveOutput(losses=losses, sums={**self._sums(batch), "pred_std": spread * batch.num_examples})

"""Pretraining without labels over packed images and videos: masks, masked packing, MAE and JEPA, probes.

Importing this package loads only torch and numpy (as ``mmvit.models`` does).
"""

from mmvit.pretrain.decoder import MaskedPredictor, PredictorConfig, Predictions
from mmvit.pretrain.masking import (BlockSpec, KindMaskConfig, MaskConfig, mask_rng, multiblock_mask, plan_mask,
                                    random_mask, tube_mask)
from mmvit.pretrain.objectives import JEPA, MAE, JEPAConfig, MAEConfig
from mmvit.pretrain.pack import pack_masked, plan_masks, sample_grid
from mmvit.pretrain.probes import AttentiveProbe, LinearProbe, knn_predict, mean_features

__all__ = [
    "MaskedPredictor", "PredictorConfig", "Predictions",
    "BlockSpec", "KindMaskConfig", "MaskConfig", "mask_rng", "multiblock_mask", "plan_mask", "random_mask",
    "tube_mask",
    "JEPA", "MAE", "JEPAConfig", "MAEConfig",
    "pack_masked", "plan_masks", "sample_grid",
    "AttentiveProbe", "LinearProbe", "knn_predict", "mean_features",
]

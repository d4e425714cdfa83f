#!/usr/bin/env bash
# make demo: the main job on the embedded default. Until the full demo lands this is a smoke run of the core.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
import torch, mmvit
torch.manual_seed(0)
model = mmvit.build_model({"variant": "Ti/16", "depth": 2, "num_classes": 10})
samples = [torch.randn(3, 16 * h, 16 * w) for h, w in [(4, 6), (7, 3), (2, 2), (5, 5)]] + [torch.randn(3, 8, 64, 96)]
batch = mmvit.pack(samples, patch_size=16, seq_len=64)
print("packed", batch.shape, "examples", batch.num_examples, f"padding {batch.padding_fraction:.1%}")
print("logits", tuple(model(batch).shape))
PY

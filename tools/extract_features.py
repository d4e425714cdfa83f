"""Pooled features (and patch tokens) of every sample of a split, from a frozen encoder, as safetensors shards.

    python tools/extract_features.py --checkpoint runs/pretrain_demo/mae --split test --out feats/test [--tokens]
    torchrun --nproc_per_node 2 tools/extract_features.py ...     (each rank its share; rank 0 writes index.json)

See docs/pretraining.md; the logic lives in mmvit/eval/features.py.
"""

from mmvit.eval.probe_cli import extract_main

if __name__ == "__main__":
    extract_main()

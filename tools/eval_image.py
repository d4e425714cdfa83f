"""Evaluate a checkpoint on images, one pass per token budget or resolution.

    python tools/eval_image.py --checkpoint runs/demo --token-budgets 16,32,64,128
    deepspeed --num_gpus 2 tools/eval_image.py --checkpoint runs/demo ...

The same tool as tools/eval_video.py restricted to images (a single full-frame view each); see
docs/evaluation.md.
"""

from mmvit.eval.cli import main

if __name__ == "__main__":
    main(kind="image")

"""Evaluate a checkpoint on videos: multi-view testing at several token budgets, with metrics and plots.

    python tools/eval_video.py --checkpoint runs/demo --views 4x3 --token-budgets 64,128,256 [--images]
    deepspeed --num_gpus 2 tools/eval_video.py --checkpoint runs/demo ...   (shards the evaluation)

Writes results.json, results.csv and PNG plots to --out (default <run dir>/eval/<split>); see
docs/evaluation.md. The logic lives in mmvit/eval/.
"""

from mmvit.eval.cli import main

if __name__ == "__main__":
    main()

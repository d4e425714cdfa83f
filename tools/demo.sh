#!/usr/bin/env bash
# make demo: build the embedded demo data, train on it with DeepSpeed (2 CPU ranks, images and videos in the
# same packs, multigrid curriculum), then evaluate on the test split. About 12-15 minutes on 2 CPU cores.
# A finished run is not retrained (--resume auto finds its final checkpoint); `rm -rf runs/demo` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=configs/demo/demo.yaml
RUN=runs/demo
PORT=${MASTER_PORT:-29537}

echo "== 1/3 demo data (docs/demo_data.md)"
$PY tools/make_demo_data.py --out data/demo

echo "== 2/3 training: deepspeed --num_gpus 2 tools/train.py --config $CONFIG"
.venv/bin/deepspeed --num_gpus 2 --master_port "$PORT" tools/train.py --config "$CONFIG" --resume auto

echo "== 3/3 evaluation on the test split: motion clips (2 clips x 3 crops, and the full frame) and digit images"
$PY tools/eval_video.py --checkpoint "$RUN" --split test --views 2x3 --resolutions 40,48 --images --out "$RUN/eval/test"

echo
echo "plots and results: $RUN/eval/test/ (results.json, results.csv, *.png); training curves: python tools/plot_run.py $RUN"

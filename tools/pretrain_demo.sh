#!/usr/bin/env bash
# make pretrain-demo: masked-autoencoder pretraining of the demo data without labels, then probes with 10% of
# the training labels (docs/pretraining.md).
#   1. the demo data (docs/demo_data.md) and a class-balanced 10% of its training lists (seeded);
#   2. MAE under DeepSpeed on 2 CPU ranks: digit images and motion clips in the same packs, multigrid
#      curriculum (configs/pretrain/demo_mae.yaml), no labels read by the objective;
#   3. the baseline: the demo classifier trained from scratch on the same 10% of labels, same steps (its
#      subset decoded once and kept in memory: data.cache_mb);
#   4. attentive, linear and k-NN probes (10% of the labels, their features at six sizes from 24 to 64 px
#      together, each training clip as four clips) on the MAE encoder, on a randomly initialised copy of it,
#      and on the supervised baseline (plus its own head), scored on the test split at 32 and 48 px;
#   5. the reconstruction picture.
# Results: runs/pretrain_demo/probe/results.json (rows per encoder, probe, kind, task, level; "comparison":
# the MAE attentive probe against each baseline's best). Finished runs are not retrained (--resume auto);
# rm -rf runs/pretrain_demo starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
DS=$VENV/bin/deepspeed
OUT=${OUT:-runs/pretrain_demo}
STEPS=${STEPS:-800}
FRACTION=${FRACTION:-0.1}
RESOLUTIONS=${RESOLUTIONS:-32,48}
# The probes' training features: the 10% at six sizes, each clip as four clips spread over it (the training
# augmentation a probe trained through the encoder would see; docs/pretraining.md).
TRAIN_RESOLUTIONS=${TRAIN_RESOLUTIONS:-24,32,40,48,56,64}
TRAIN_VIEWS=${TRAIN_VIEWS:-4xfull}
PORT=${MASTER_PORT:-29541}
export PATH="$VENV/bin:$PATH"
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start )) s]"; }

echo "== 1/5 demo data and a class-balanced $FRACTION of the training labels"
$PY tools/make_demo_data.py --out data/demo
SOURCES=$($PY tools/probe.py --checkpoint random: --config configs/demo/demo.yaml --labels-fraction "$FRACTION" \
          --subset-only --out "$OUT/probe")
stamp

echo "== 2/5 MAE pretraining: deepspeed --num_gpus 2 tools/train.py --config configs/pretrain/demo_mae.yaml"
$DS --num_gpus 2 --master_port "$PORT" tools/train.py --config configs/pretrain/demo_mae.yaml --resume auto \
    --set run_dir="$OUT/mae" train.steps="$STEPS"
stamp

echo "== 3/5 supervised baseline: the demo classifier with the MAE encoder's trunk (width 64) from scratch on the same labels, $STEPS steps"
$DS --num_gpus 2 --master_port "$PORT" tools/train.py --config configs/demo/demo.yaml --resume auto \
    --set run_dir="$OUT/supervised_10pct" train.steps="$STEPS" "data.splits.train.sources=$SOURCES" \
    model.width=64 model.heads=2 model.mlp_dim=128 data.cache_mb=256 \
    train.save_every="$STEPS" eval.every=0 eval.at_end=false
stamp

echo "== 4/5 probes on the frozen encoders ($FRACTION of the training labels at $TRAIN_RESOLUTIONS px; test split at $RESOLUTIONS px)"
$PY tools/probe.py --checkpoint mae="$OUT/mae" --checkpoint random="random:$OUT/mae" \
    --checkpoint supervised_10pct="$OUT/supervised_10pct" --data-config configs/demo/demo.yaml \
    --probe attentive linear knn head --labels-fraction "$FRACTION" --resolutions "$RESOLUTIONS" \
    --train-resolutions "$TRAIN_RESOLUTIONS" --train-views "$TRAIN_VIEWS" --train-levels all \
    --compare mae --out "$OUT/probe"
stamp

echo "== 5/5 reconstructions of held-out images and clips"
$PY tools/show_masked.py "$OUT/mae" --data-config configs/demo/demo.yaml --split test \
    --out "$OUT/reconstruction.png"
stamp

echo
echo "results: $OUT/probe/results.md and results.json; picture: $OUT/reconstruction.png"

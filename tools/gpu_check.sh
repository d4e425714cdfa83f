#!/usr/bin/env bash
# First run of mmvit's GPU path: CUDA tests, a 50-step bf16 ZeRO-2 training with a resume, the GPU benchmark,
# in at most 8 minutes; one JSON and one markdown report (docs/benchmarks.md, GPU section).
#
#   tools/gpu_check.sh [--out DIR] [--parts tests,train,bench] [--dry-run] [--strict]
#   tools/gpu_check.sh --wheels DIR [--venv PATH | --here]          # offline: install DIR's wheels first
#   tools/gpu_check.sh --prepare DIR --python 3.12 [--torch 2.11]   # online: fill DIR for an offline machine
#
# It uses the Python (and so the torch) it finds: $GPU_CHECK_PYTHON, else python3 on PATH. torch is never
# installed or replaced. Everything else is in tools/gpu_check.py (python3 tools/gpu_check.py --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${GPU_CHECK_PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$py" ]; then
    echo "gpu_check: no python3 on PATH; set GPU_CHECK_PYTHON=/path/to/python (the one with CUDA torch)" >&2
    exit 2
fi
exec "$py" "$here/gpu_check.py" "$@"

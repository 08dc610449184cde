#!/usr/bin/env bash
# The prepared GPU check. Part 1 needs torch alone (benchmarks/gpu_check.py: the loss cores on
# CUDA against the CPU and torchvision). Part 2 trains the demo RetinaNet and Faster R-CNN for
# 200 iterations on CUDA with AMP and 20 on the CPU (benchmarks/train_check.py): iteration
# time, peak GPU memory, mAP and the share of mmimb's CUDA fallback for mmcv's ops. Part 2
# needs the full stack (tools/setup_env.sh); where mmcv or mmdet is missing it is skipped, and
# says so. Arguments go to part 1.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/gpu_check.py "$@"
if python -c "import mmcv.ops, mmdet" 2>/dev/null; then
  python tools/check_ops.py
  python benchmarks/train_check.py --out "${TRAIN_CHECK_OUT:-train_check.json}"
else
  echo "[gpu_check] part 2 (training) skipped: mmcv with compiled ops and mmdet are not" \
    "installed here (run tools/setup_env.sh first)"
fi

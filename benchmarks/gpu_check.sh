#!/usr/bin/env bash
# The one prepared GPU check (torch only; no mmcv/mmdet needed): see benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/gpu_check.py "$@"

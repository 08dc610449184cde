#!/usr/bin/env bash
# Training on a Slurm cluster (mmdet's slurm_train.sh):
#   [GPUS=16] tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]
#
# srun starts GPUS tasks, GPUS_PER_NODE per node, each one process of tools/train.py
# --launcher slurm (rank, world size and master address come from Slurm's variables).
# On nodes without a GPU set GRES= (empty): no --gres is requested and the tasks train on CPU
# with gloo (mmimb.tool_utils.init_cpu_distributed); GPUS and GPUS_PER_NODE then count tasks.
# Environment: GPUS (default 8), GPUS_PER_NODE (default 8, at most GPUS), CPUS_PER_TASK
# (default 5), GRES (default gpu:GPUS_PER_NODE), SRUN_ARGS (more srun options), PYTHON
# (default: the repository's .venv/bin/python if there is one, else python3).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:$GPUS_PER_NODE}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
# SRUN_ARGS is split into words on purpose, as in mmdet.
# shellcheck disable=SC2086
PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
srun -p "$PARTITION" \
  --job-name="$JOB_NAME" \
  ${GRES:+--gres="$GRES"} \
  --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 \
  ${SRUN_ARGS:-} \
  "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"

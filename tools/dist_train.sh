#!/usr/bin/env bash
# Distributed training on one or more machines: tools/dist_train.sh CONFIG NUM_PROCS [train.py options]
#
# NUM_PROCS processes per machine: one per GPU with the config's backend (nccl); on a machine
# without a GPU, CPU processes with gloo (mmimb.tool_utils.init_cpu_distributed), same command.
# torch's launcher runs as a module of $PYTHON (default: the repository's .venv/bin/python if
# there is one, else python3), so `torchrun` need not be on PATH.
# Several machines: NNODES, NODE_RANK, MASTER_ADDR and PORT, as in mmdet's dist_train.sh.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCS [tools/train.py options]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROC" "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"

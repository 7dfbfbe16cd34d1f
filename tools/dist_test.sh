#!/usr/bin/env bash
# Test a checkpoint with GPUS processes per node, started by torchrun
# (--launcher pytorch). Without GPUs the processes run on the CPU (gloo).
#
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
#
# Several nodes: run it on each with the same NNODES, MASTER_ADDR (an address
# of the node with NODE_RANK=0) and PORT, and NODE_RANK 0..NNODES-1, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_test.sh CONFIG CKPT 8
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 tools/dist_test.sh CONFIG CKPT 8
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py options]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$ROOT/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"

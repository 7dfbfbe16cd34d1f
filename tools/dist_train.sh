#!/usr/bin/env bash
# Train with GPUS processes per node, started by torchrun (--launcher pytorch).
# Without GPUs the processes run on the CPU and talk over gloo.
#
#   tools/dist_train.sh CONFIG GPUS [train.py options]
#
# Several nodes: run it on each with the same NNODES, MASTER_ADDR (an address
# of the node with NODE_RANK=0, reachable from all) and PORT, and NODE_RANK
# 0..NNODES-1; GPUS is per node. Two 8-GPU nodes:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8
# The total batch is NNODES x GPUS x batch_size; with fewer GPUs than the
# recipe's 8, add --accumulate auto (see docs/fewer_gpus.md).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG GPUS [train.py options]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# torch.distributed.run is torchrun, run by the active interpreter.
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$ROOT/train.py" "$CONFIG" --launcher pytorch "${@:3}"

#!/usr/bin/env bash
# Multi-machine training with MXNet's parameter server (kvstore dist_sync / dist_device_sync).
#
# MXNet's bundled tools/launch.py fails on Python >= 3.9 and binds a non-loopback address, so this script sets the
# DMLC_* variables itself. Every process needs the same four values:
#   DMLC_PS_ROOT_URI   address of the machine running the scheduler (reachable by all machines)
#   DMLC_PS_ROOT_PORT  a free port there
#   DMLC_NUM_SERVER    number of server processes, DMLC_NUM_WORKER number of workers
#
# On each machine run one role:
#   scripts/dist_train.sh scheduler                      # once, on DMLC_PS_ROOT_URI
#   scripts/dist_train.sh server                         # DMLC_NUM_SERVER times in total
#   scripts/dist_train.sh worker --kvstore dist_sync ... # DMLC_NUM_WORKER times; arguments go to `vargface train`
# or start everything on this machine (loopback), e.g. for a smoke test:
#   DMLC_NUM_WORKER=2 scripts/dist_train.sh local --kvstore dist_sync --ctx cpu --dataset DIR ...
# Worker k reads shard k of the data (part_index/num_parts); worker 0 writes PREFIX, worker k PREFIX-workerK.
set -euo pipefail

VENV_BIN=${VENV_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
PYTHON=${PYTHON:-$VENV_BIN/python}
export DMLC_PS_ROOT_URI=${DMLC_PS_ROOT_URI:-127.0.0.1}
export DMLC_PS_ROOT_PORT=${DMLC_PS_ROOT_PORT:-9091}
export DMLC_NUM_SERVER=${DMLC_NUM_SERVER:-1}
export DMLC_NUM_WORKER=${DMLC_NUM_WORKER:-2}
# This machine's address as the other nodes see it; loopback for single-machine runs.
export DMLC_NODE_HOST=${DMLC_NODE_HOST:-$DMLC_PS_ROOT_URI}
[ "$DMLC_NODE_HOST" = 127.0.0.1 ] && export DMLC_INTERFACE=${DMLC_INTERFACE:-lo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export PS_VERBOSE=${PS_VERBOSE:-0}

role=${1:?usage: dist_train.sh scheduler|server|worker|local [vargface train options]}
shift

run_role() {  # role, then train options for workers
    local r=$1
    shift
    if [ "$r" = worker ]; then
        DMLC_ROLE=worker "$PYTHON" -m vargface train "$@"
    else
        # Serves until the workers finish (see vargface.train.trainer.serve for why not `import mxnet`).
        "$PYTHON" -c "from vargface.train.trainer import serve; serve('$r')"
    fi
}

case "$role" in
    scheduler|server|worker) run_role "$role" "$@" ;;
    local)
        pids=()
        trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
        run_role scheduler & pids+=($!)
        for _ in $(seq "$DMLC_NUM_SERVER"); do run_role server & pids+=($!); done
        workers=()
        for _ in $(seq "$DMLC_NUM_WORKER"); do run_role worker "$@" & workers+=($!); done
        pids+=("${workers[@]}")
        status=0
        for pid in "${workers[@]}"; do wait "$pid" || status=$?; done
        # a worker that failed (before it joined, or at a stop) leaves the scheduler and servers waiting: end them
        [ "$status" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
        for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
        trap - EXIT
        exit $status ;;
    *) echo "dist_train.sh: unknown role '$role' (expected scheduler, server, worker or local)" >&2; exit 2 ;;
esac

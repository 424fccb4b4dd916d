#!/usr/bin/env bash
# Multi-machine training with MXNet's parameter server (kvstore dist_sync / dist_device_sync).
#
# MXNet's bundled tools/launch.py fails on Python >= 3.9 and binds a non-loopback address, so this script sets the
# DMLC_* variables itself. Every process needs the same four values:
#   DMLC_PS_ROOT_URI   address of the machine running the scheduler (reachable by all machines)
#   DMLC_PS_ROOT_PORT  a free port there
#   DMLC_NUM_SERVER    number of server processes, DMLC_NUM_WORKER number of workers
# and one value of its own machine:
#   DMLC_NODE_HOST     this machine's address as the others reach it. Unset, it is found from the route to
#                      DMLC_PS_ROOT_URI (`ip route get`: the source address of that route); loopback when the root
#                      is loopback. It is never the root's address on another machine.
# The cores of a machine are shared by the processes it runs: each server and worker gets OMP_NUM_THREADS and
# data-loading threads (`--workers`) of cores / NODE_PROCESSES, the scheduler one thread.
#   NODE_PROCESSES     servers + workers this machine runs (default: all of them with `local`, else 2: a server
#                      and a worker per machine, as in the README's example). A value set by hand wins:
#                      OMP_NUM_THREADS, or --workers among the training options.
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
export PS_VERBOSE=${PS_VERBOSE:-0}

role=${1:?usage: dist_train.sh scheduler|server|worker|local [vargface train options]}
shift

fail() { echo "dist_train.sh: $*" >&2; exit 2; }

loopback() { case "$1" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

if [ -z "${DMLC_NODE_HOST:-}" ]; then
    if loopback "$DMLC_PS_ROOT_URI"; then
        DMLC_NODE_HOST=127.0.0.1
    else
        # the source address of this machine's route to the root: the address the root (and the other machines
        # on that network) reach it at; on the root's own machine, the root address itself
        DMLC_NODE_HOST=$(ip -o route get "$DMLC_PS_ROOT_URI" 2>/dev/null \
                         | sed -n 's/.* src \([^ ]*\).*/\1/p' | head -n 1) || true
        [ -n "$DMLC_NODE_HOST" ] || fail "cannot find this machine's address on the route to DMLC_PS_ROOT_URI=" \
            "$DMLC_PS_ROOT_URI (is \`ip\` installed, is the root reachable?); set DMLC_NODE_HOST to this machine's" \
            "own address"
    fi
fi
export DMLC_NODE_HOST
loopback "$DMLC_NODE_HOST" && export DMLC_INTERFACE=${DMLC_INTERFACE:-lo}

case "$role" in
    local) processes=${NODE_PROCESSES:-$((DMLC_NUM_SERVER + DMLC_NUM_WORKER))} ;;
    *) processes=${NODE_PROCESSES:-2} ;;
esac
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || fail "NODE_PROCESSES=$processes: expected a whole number >= 1"
cores=$(nproc)  # the cores this script may use (its affinity)
share=$((cores / processes))
[ "$share" -ge 1 ] || share=1

run_role() {  # role, then train options for workers
    local r=$1 threads=$share
    shift
    [ "$r" = scheduler ] && threads=1  # it routes messages only
    if [ "$r" = worker ]; then
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} DMLC_ROLE=worker "$PYTHON" -m vargface train --workers "$share" "$@"
    else
        # Serves until the workers finish (see vargface.train.trainer.serve for why not `import mxnet`).
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} "$PYTHON" -c "from vargface.train.trainer import serve; serve('$r')"
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
    *) fail "unknown role '$role' (expected scheduler, server, worker or local)" ;;
esac

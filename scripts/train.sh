#!/usr/bin/env bash
# `vargface train --config CONFIG` with the data, devices and prefix from the environment, each passed only when set
# (the file's value stands otherwise); the wrapper that train_r100.sh and train_vargfacenet.sh name their file to.
#
#   scripts/train.sh CONFIG [more vargface train options, which win over the file]
#   DATA=DIR          the data folder (train.rec, train.idx, property, lfw.bin, cfp_fp.bin, agedb_30.bin)
#   CTX=gpu:0,1,2,3   training devices          PREFIX=models/NAME/model   where the run goes
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VARGFACE=${VARGFACE:-$ROOT/.venv/bin/vargface}
CONFIG=${1:?usage: scripts/train.sh CONFIG [vargface train options]}
shift
options=(--config "$CONFIG")
[ -n "${DATA:-}" ] && options+=(--dataset "$DATA")
[ -n "${CTX:-}" ] && options+=(--ctx "$CTX")
[ -n "${PREFIX:-}" ] && options+=(--prefix "$PREFIX")

# Environment variables that matter for speed on GPUs.
export MXNET_CUDNN_AUTOTUNE_DEFAULT=${MXNET_CUDNN_AUTOTUNE_DEFAULT:-1}  # pick the fastest cuDNN algorithms once
export MXNET_ENGINE_TYPE=${MXNET_ENGINE_TYPE:-ThreadedEnginePerDevice}  # one engine thread pool per GPU
export MXNET_GPU_WORKER_NTHREADS=${MXNET_GPU_WORKER_NTHREADS:-2}       # overlap copies and compute per GPU
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # MXNet's CPU operators; FaceRecordIter decodes in its own threads

exec "$VARGFACE" train "${options[@]}" "$@"

#!/usr/bin/env bash
# Train the LResNet100E-IR teacher with ArcFace on MS1M-ArcFace (emore), InsightFace's recipe:
# SGD lr 0.1 (x0.1 at 100k, 160k, 220k batches), momentum 0.9, wd 5e-4, 128 images per GPU, kvstore device.
# Edit the four settings below, then run: scripts/train_r100.sh [more --KEY VALUE options]
set -euo pipefail

GPUS=${GPUS:-0,1,2,3}                          # GPU ids to train on
DATA=${DATA:-../datasets/faces_emore}          # folder with train.rec, train.idx, property, lfw.bin, ...
MODELS=${MODELS:-./models}                     # checkpoints go to MODELS/r100-arcface-emore/model-*
VARGFACE=${VARGFACE:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/vargface}

# Environment variables that matter for speed.
export MXNET_CUDNN_AUTOTUNE_DEFAULT=${MXNET_CUDNN_AUTOTUNE_DEFAULT:-1}  # pick the fastest cuDNN algorithms once
export MXNET_ENGINE_TYPE=${MXNET_ENGINE_TYPE:-ThreadedEnginePerDevice}  # one engine thread pool per GPU
export MXNET_GPU_WORKER_NTHREADS=${MXNET_GPU_WORKER_NTHREADS:-2}       # overlap copies and compute per GPU
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # MXNet's CPU operators; FaceRecordIter decodes in its own threads

exec "$VARGFACE" train --network r100 --loss arcface --dataset emore --dataset-path "$DATA" \
    --ctx "gpu:$GPUS" --kvstore device --models-root "$MODELS" \
    --per-batch-size 128 --lr 0.1 --lr-steps 100000,160000,220000 --wd 0.0005 --mom 0.9 \
    --max-steps 240000 --verbose 2000 --frequent 20 --ckpt 3 --on-nan stop "$@"

#!/usr/bin/env bash
# Train VarGFaceNet (the released network, SE on) with ArcFace on MS1M-ArcFace (emore).
# lr 0.1 with step decay gave NaN/inf losses for users of the release, so this follows the authors' advice:
# linear warm-up, then cosine decay, and Xavier(gaussian, out, 2) initialisation. The release's own
# initialiser is --net-init xavier_uniform_in_2.
# Edit the settings below, then run: scripts/train_vargfacenet.sh [more --KEY VALUE options]
# (For distillation from a trained r100 teacher, see `vargface distill --help`.)
set -euo pipefail

GPUS=${GPUS:-0,1,2,3}                          # GPU ids to train on
DATA=${DATA:-../datasets/faces_emore}          # folder with train.rec, train.idx, property, lfw.bin, ...
MODELS=${MODELS:-./models}                     # checkpoints go to MODELS/vargfacenet-arcface-emore/model-*
STEPS=${STEPS:-240000}                         # total batches; the cosine reaches LR_MIN here
VARGFACE=${VARGFACE:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/vargface}

# Environment variables that matter for speed.
export MXNET_CUDNN_AUTOTUNE_DEFAULT=${MXNET_CUDNN_AUTOTUNE_DEFAULT:-1}  # grouped convs: let cuDNN pick the kernels
export MXNET_ENGINE_TYPE=${MXNET_ENGINE_TYPE:-ThreadedEnginePerDevice}
export MXNET_GPU_WORKER_NTHREADS=${MXNET_GPU_WORKER_NTHREADS:-2}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

exec "$VARGFACE" train --network vargfacenet --loss arcface --dataset emore --dataset-path "$DATA" \
    --ctx "gpu:$GPUS" --kvstore device --models-root "$MODELS" \
    --per-batch-size 128 --lr 0.1 --lr-schedule cosine --warmup-steps 2000 --warmup-lr 0.001 \
    --lr-total-steps "$STEPS" --max-steps "$STEPS" --lr-min 0 --wd 0.0005 --mom 0.9 \
    --net-init xavier_gaussian_out_2 --verbose 2000 --frequent 20 --ckpt 3 --on-nan rollback "$@"

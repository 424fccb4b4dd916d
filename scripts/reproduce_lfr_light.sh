#!/usr/bin/env bash
# VarGFaceNet for the LFR2019 deepglint-light track, full scale: ms1m-retinaface-t1, 8 GPUs.
# A thin wrapper: the recipe is `vargface recipe lfr-light` (see its --help) with its training settings in
# configs/r100_retina.py, configs/vargfacenet_retina.py and configs/vargfacenet_recursive.py. It prints every
# step as a `vargface` command before running it, skips finished steps on a rerun and continues an interrupted
# training with --resume. Settings from the environment:
#   DATA=../datasets/ms1m-retinaface-t1   train.rec, train.idx, property, lfw.bin, cfp_fp.bin, agedb_30.bin
#   WORK=./lfr_light                      checkpoints, results and the recipe state
#   GPUS=gpu:0,1,2,3,4,5,6,7              training devices;  EVAL_CTX=gpu:0  verification / features
#   VAL_TARGETS=lfw,cfp_fp,agedb_30       packs verified after training
#   LFR_LIST=  LFR_ROOT=.                 the LFR2019 test list (empty: no feature file) and its image folder
#   DRY_RUN=1                             print the commands only
# More `vargface recipe lfr-light` options pass through, e.g. --set student.per_batch_size=32.
set -euo pipefail

VARGFACE=${VARGFACE:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/vargface}
options=(--dataset "${DATA:-../datasets/ms1m-retinaface-t1}" --out "${WORK:-./lfr_light}"
         --ctx "${GPUS:-gpu:0,1,2,3,4,5,6,7}" --eval-ctx "${EVAL_CTX:-gpu:0}"
         --target "${VAL_TARGETS:-lfw,cfp_fp,agedb_30}" --root "${LFR_ROOT:-.}")
[ -n "${LFR_LIST:-}" ] && options+=(--lfr-list "$LFR_LIST")
[ "${DRY_RUN:-0}" = 1 ] && options+=(--dry-run)
exec "$VARGFACE" recipe lfr-light "${options[@]}" "$@"

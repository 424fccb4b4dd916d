#!/usr/bin/env bash
# VarGFaceNet's recursive distillation: an r100 ArcFace teacher, its embeddings cached once, then VarGFaceNet
# students distilled from it for the generations of configs/vargfacenet_recursive.py (generation 2 starts from
# generation 1's final weights, same teacher). A thin wrapper of `vargface recipe recursive` (see its --help):
#
#   DATA=/data/ms1m-retinaface-t1 scripts/distill_recursive.sh [vargface recipe recursive options, e.g. --set
#   distill.kd_weight=2]
#
# Settings from the environment, as in scripts/reproduce_lfr_light.sh:
#   DATA=../datasets/ms1m-retinaface-t1   train.rec, train.idx, property and the verification packs (a first
#                                         argument that is not an option names it too)
#   CTX=gpu:0,1,2,3,4,5,6,7  devices for the teacher, the cache and the students (the configs are tuned for 8;
#                          with fewer, pass --set per_batch_size=N to keep the global batch of 512)
#   TEACHER=prefix,epoch   an existing teacher checkpoint; without it an r100 is trained into WORK first
#   WORK=./recursive       checkpoints and the recipe state
#   DRY_RUN=1              print the commands only
# Run the same command again after an interruption: finished steps are skipped, an interrupted training continues
# with --resume, and an existing teacher cache is reused once it checks out for this data and teacher.
set -euo pipefail

DATA=${DATA:-../datasets/ms1m-retinaface-t1}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then DATA=$1; shift; fi
VARGFACE=${VARGFACE:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/vargface}
options=(--dataset "$DATA" --out "${WORK:-./recursive}" --ctx "${CTX:-gpu:0,1,2,3,4,5,6,7}")
[ -n "${TEACHER:-}" ] && options+=(--teacher "$TEACHER")
[ "${DRY_RUN:-0}" = 1 ] && options+=(--dry-run)
exec "$VARGFACE" recipe recursive "${options[@]}" "$@"

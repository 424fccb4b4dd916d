#!/usr/bin/env bash
# VarGFaceNet's recipe (docs/recipes.md#recursive-distillation): an r100 ArcFace teacher, then VarGFaceNet
# students distilled from it for two recursive generations (generation 2 starts from generation 1's final
# weights, same teacher).
#
#   scripts/distill_recursive.sh DATA_DIR [extra `vargface distill` options, e.g. --kd-weight 2 --end-epoch 20]
#
# DATA_DIR holds train.rec/.idx/property and the verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin).
# Knobs (environment):
#   CTX=gpu:0,1,2,3            devices for the teacher, the cache and the students
#   TEACHER=prefix,epoch       an existing teacher checkpoint; without it an r100 is trained first
#   TEACHER_NETWORK=r100       network preset of the teacher trained here
#   TEACHER_OPTS="..."         extra `vargface train` options for the teacher (e.g. --lr-steps ...)
#   STUDENT_NETWORK=vargfacenet
#   OUT=models/vargfacenet-distill   chain prefix: OUT-gen1, OUT-gen2, OUT-lineage.json
#   GENERATIONS=2
# Augmentation stays mirror-only (the release's setting), so the teacher runs once over the data, into a cache
# beside train.rec, and the students read it. Run the same command again after an interruption: every step
# resumes where it stopped (the teacher with --resume, the cache is reused, the chain with --resume).
set -euo pipefail

DATA=${1:?usage: scripts/distill_recursive.sh DATA_DIR [vargface distill options]}
shift
VENV_BIN=${VENV_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
VARGFACE=${VARGFACE:-$VENV_BIN/vargface}
CTX=${CTX:-gpu:0,1,2,3}
TEACHER_NETWORK=${TEACHER_NETWORK:-r100}
STUDENT_NETWORK=${STUDENT_NETWORK:-vargfacenet}
OUT=${OUT:-models/vargfacenet-distill}
GENERATIONS=${GENERATIONS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

# 1. The teacher: ArcFace-trained ResNet; --ckpt 3 keeps its latest weights as number 1. A marker file says
#    it finished, so an interrupted teacher run is resumed rather than used half-trained.
if [ -z "${TEACHER:-}" ]; then
    teacher_prefix=models/$TEACHER_NETWORK-arcface-teacher/model
    if [ ! -f "$teacher_prefix.finished" ]; then
        resume=()
        [ -f "$teacher_prefix-state.json" ] && resume=(--resume)
        # shellcheck disable=SC2086
        "$VARGFACE" train --network "$TEACHER_NETWORK" --loss arcface --dataset "$DATA" --ctx "$CTX" \
            --prefix "$teacher_prefix" --ckpt 3 "${resume[@]}" ${TEACHER_OPTS:-}
        touch "$teacher_prefix.finished"
    fi
    TEACHER=$teacher_prefix,1
fi

# 2. The teacher's embeddings of every image and its mirror, once.
teacher_prefix=${TEACHER%,*}
cache=$DATA/train.$(basename "$(dirname "$teacher_prefix")")-$(basename "$teacher_prefix")-$(printf %04d "${TEACHER##*,}").kdcache
[ -f "$cache" ] || "$VARGFACE" distill cache --teacher "$TEACHER" --data-dir "$DATA" --ctx "$CTX" --out "$cache"

# 3. Generations 1..G of the student under the frozen teacher (angular distillation).
resume=()
[ -f "$OUT-lineage.json" ] && resume=(--resume)
"$VARGFACE" distill --teacher "$TEACHER" --teacher-cache "$cache" --kd-type angular \
    --generations "$GENERATIONS" --network "$STUDENT_NETWORK" --loss arcface --dataset "$DATA" --ctx "$CTX" \
    --prefix "$OUT" "${resume[@]}" "$@"

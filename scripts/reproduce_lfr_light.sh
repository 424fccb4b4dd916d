#!/usr/bin/env bash
# VarGFaceNet for the LFR2019 deepglint-light track, full scale: ms1m-retinaface-t1, 8 GPUs.
#
#   1. FLOPs gate: the student network must fit the light track's 1 GFLOPs budget (LFR2019 rule)
#   2. teacher: LResNet100E-IR (r100) with ArcFace
#   3. student baseline: VarGFaceNet from scratch
#   4. teacher embeddings cached once (image and mirror), then recursive angular distillation, generations 1 and 2
#   5. the FLOPs gate again on the trained student's stored graph
#   6. verification of every model on lfw / cfp_fp / agedb_30 (Accuracy-Flip, 10 folds)
#   7. the LFR2019 image-track feature file of the final student (when LFR_LIST is set)
#
# Every step is one `vargface` command, printed before it runs, so it can be rerun alone. A finished step leaves
# WORK/.done-STEP and is skipped next time; an interrupted training step continues with --resume.
# DRY_RUN=1 prints the commands without running them. Settings are the variables below (override from the
# environment), e.g. DATA=/data/ms1m-retinaface-t1 GPUS=gpu:0,1,2,3 scripts/reproduce_lfr_light.sh
set -euo pipefail

DATA=${DATA:-../datasets/ms1m-retinaface-t1}  # train.rec, train.idx, property, lfw.bin, cfp_fp.bin, agedb_30.bin
WORK=${WORK:-./lfr_light}                     # checkpoints, logs, results
GPUS=${GPUS:-gpu:0,1,2,3,4,5,6,7}             # training devices (one process, kvstore device)
EVAL_CTX=${EVAL_CTX:-gpu:0}                   # verification / feature extraction devices
BATCH=${BATCH:-64}                            # per device: 8 x 64 = 512, InsightFace's global batch
VAL_TARGETS=${VAL_TARGETS:-lfw,cfp_fp,agedb_30}
TEACHER_NET=${TEACHER_NET:-r100}
STUDENT_NET=${STUDENT_NET:-vargfacenet}
TEACHER_STEPS=${TEACHER_STEPS:-180000}        # InsightFace's r100 schedule: lr 0.1, x0.1 at 100k, 160k
TEACHER_LR_STEPS=${TEACHER_LR_STEPS:-100000,160000}
STUDENT_STEPS=${STUDENT_STEPS:-180000}        # per generation, the same for the scratch baseline
STUDENT_WARMUP=${STUDENT_WARMUP:-2000}        # warm-up + cosine: VarGFaceNet at lr 0.1 without it diverges
KD_WEIGHT=${KD_WEIGHT:-7}                     # alpha of L_arc + alpha * angular loss (VarGFaceNet: 7)
VERBOSE=${VERBOSE:-2000}                      # verify + checkpoint every N updates
FREQUENT=${FREQUENT:-20}                      # speedometer every N updates
EXTRA_TEACHER=${EXTRA_TEACHER:-}              # more `vargface train` options for the teacher, e.g. --net-num-layers 18
EXTRA_STUDENT=${EXTRA_STUDENT:-}              # more options for the student runs, e.g. --net-multiplier 0.25
LFR_LIST=${LFR_LIST:-}                        # LFR2019 image-track test list (1,862,120 paths); empty: skip step 7
LFR_ROOT=${LFR_ROOT:-.}                       # folder the listed paths are relative to
VARGFACE=${VARGFACE:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/vargface}
DRY_RUN=${DRY_RUN:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

TEACHER=$WORK/$TEACHER_NET-arcface/model
SCRATCH=$WORK/$STUDENT_NET-scratch/model
STUDENT=$WORK/$STUDENT_NET-distill/model
COMMON=(--dataset folder --dataset-path "$DATA" --val-targets "$VAL_TARGETS" --ctx "$GPUS" --kvstore device --per-batch-size "$BATCH"
        --frequent "$FREQUENT" --verbose "$VERBOSE" --ckpt 3)
# shellcheck disable=SC2206  # EXTRA_* are option lists, split on purpose
STUDENT_OPTS=(--network "$STUDENT_NET" --loss arcface --lr 0.1 --lr-schedule cosine --warmup-steps "$STUDENT_WARMUP"
              --lr-total-steps "$STUDENT_STEPS" --max-steps "$STUDENT_STEPS" "${COMMON[@]}" $EXTRA_STUDENT)
# shellcheck disable=SC2206
TEACHER_OPTS=(--network "$TEACHER_NET" --loss arcface --lr 0.1 --lr-schedule step --lr-steps "$TEACHER_LR_STEPS"
              --max-steps "$TEACHER_STEPS" "${COMMON[@]}" $EXTRA_TEACHER)

run() {  # print a vargface command (to stderr, like set -x), then run it unless DRY_RUN=1
    local line="+ vargface" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then line+=" $a"; else line+=" $(printf '%q' "$a")"; fi
    done
    echo "$line" >&2
    [ "$DRY_RUN" = 1 ] || "$VARGFACE" "$@"
}

step() {  # step NAME PREFIX-OR-EMPTY vargface-args...: skip when done; --resume an interrupted training run
    local name=$1 prefix=$2
    shift 2
    if [ -e "$WORK/.done-$name" ]; then
        echo "== $name: done ($WORK/.done-$name), skipped"
        return
    fi
    echo "== $name"
    if [ -n "$prefix" ] && { [ -e "$prefix-state.json" ] || [ -e "$prefix-lineage.json" ]; }; then
        set -- "$@" --resume
    fi
    run "$@"
    [ "$DRY_RUN" = 1 ] || touch "$WORK/.done-$name"
}

flops_gate() {  # flops_gate NAME vargface-flops-args...: refuse a network over the light track's budget
    local name=$1
    shift
    echo "== flops gate: $name"
    if [ ! -e "$WORK/flops-$name.json" ]; then
        run flops "$@" --json > "$WORK/flops-$name.json.tmp"
        [ "$DRY_RUN" = 1 ] && { rm -f "$WORK/flops-$name.json.tmp"; return; }
        mv "$WORK/flops-$name.json.tmp" "$WORK/flops-$name.json"
    fi
    cat "$WORK/flops-$name.json"
    if ! grep -q '"fits_budget": true' "$WORK/flops-$name.json"; then
        echo "reproduce_lfr_light.sh: $name exceeds the deepglint-light 1.0G FLOPs budget" >&2
        exit 1
    fi
}

verify() {  # verify NAME CHECKPOINT: Accuracy-Flip on every target, JSON beside the models
    local name=$1 model=$2 targets=()
    IFS=, read -r -a names <<< "$VAL_TARGETS"
    for t in "${names[@]}"; do targets+=("$DATA/$t.bin"); done
    if [ -e "$WORK/verify-$name.json" ]; then
        echo "== verify $name: done ($WORK/verify-$name.json), skipped"
        return
    fi
    echo "== verify $name"
    run verify --model "$model" --target "$(IFS=,; echo "${targets[*]}")" --ctx "$EVAL_CTX" --json \
        > "$WORK/verify-$name.json.tmp"
    [ "$DRY_RUN" = 1 ] && { rm -f "$WORK/verify-$name.json.tmp"; return; }
    mv "$WORK/verify-$name.json.tmp" "$WORK/verify-$name.json"
    grep -E '^  "|"accuracy"' "$WORK/verify-$name.json" | grep -v fold || true
}

mkdir -p "$WORK"
flops_gate "$STUDENT_NET" "$STUDENT_NET"
step teacher "$TEACHER" train "${TEACHER_OPTS[@]}" --prefix "$TEACHER"
step scratch "$SCRATCH" train "${STUDENT_OPTS[@]}" --prefix "$SCRATCH"
step cache "" distill cache --teacher "$TEACHER,1" --data-dir "$DATA" --ctx "$GPUS" --overwrite
step distill "$STUDENT" distill --teacher "$TEACHER,1" --teacher-cache auto --kd-type angular \
    --kd-weight "$KD_WEIGHT" --generations 2 "${STUDENT_OPTS[@]}" --prefix "$STUDENT"
flops_gate "$STUDENT_NET-gen2" --model "$STUDENT-gen2,1"
verify teacher "$TEACHER,1"
verify scratch "$SCRATCH,1"
verify gen1 "$STUDENT-gen1,1"
verify gen2 "$STUDENT-gen2,1"
if [ -n "$LFR_LIST" ]; then
    step lfr "" lfr features --model "$STUDENT-gen2,1" --list "$LFR_LIST" --root "$LFR_ROOT" \
        --out "$WORK/lfr2019-$STUDENT_NET-gen2.bin" --ctx "$EVAL_CTX"
else
    echo "== lfr: LFR_LIST is empty; set it to the LFR2019 test list to write the feature file"
fi
echo "== done: results in $WORK (verify-*.json, flops-*.json, lineage $STUDENT-lineage.json)"

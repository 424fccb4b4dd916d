#!/usr/bin/env bash
# Train the LResNet100E-IR (r100) ArcFace teacher of the LFR2019 deepglint-light recipe: InsightFace's r100 schedule
# on ms1m-retinaface-t1, every setting in configs/r100_retina.py. DATA, CTX and PREFIX come from the environment
# (scripts/train.sh); more `vargface train` options win over the file, e.g. scripts/train_r100.sh --per-batch-size 32
exec "$(dirname "$0")/train.sh" "$(cd "$(dirname "$0")/.." && pwd)/configs/r100_retina.py" "$@"

#!/usr/bin/env bash
# Train VarGFaceNet from scratch with ArcFace, the baseline of the LFR2019 deepglint-light recipe: warm-up + cosine
# as the authors advise and Xavier(gaussian, out, 2), every setting in configs/vargfacenet_retina.py (the release's
# own initialiser is --net-init xavier_uniform_in_2). DATA, CTX and PREFIX come from the environment
# (scripts/train.sh); more `vargface train` options win over the file. Distillation: scripts/distill_recursive.sh.
exec "$(dirname "$0")/train.sh" "$(cd "$(dirname "$0")/.." && pwd)/configs/vargfacenet_retina.py" "$@"

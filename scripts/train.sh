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

# No MXNet or OpenMP settings here: `vargface` chooses the thread counts for the devices it trains on, and the
# settings docs/environment.md discusses (cuDNN autotune, determinism) are the user's to export.
exec "$VARGFACE" train "${options[@]}" "$@"

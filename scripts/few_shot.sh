#!/usr/bin/env bash
# Paper Figure 6, one point: CoOp for multi-label images trained on K shots per class, alone and
# ensembled with TaI-DPT (rate chosen on the val split). METHOD=CoCoOpML runs CoCoOp instead.
#
#   bash scripts/few_shot.sh DATASET K SEED     # DATASET: voc2007, coco2014, nuswide, synthetic
#   DATA=~/data METHOD=CoCoOpML bash scripts/few_shot.sh coco2014 16 1
#
# Writes OUTPUT/DATASET/{TaIDPT/seedS, METHOD/kK/seedS, METHOD+TaIDPT/kK/seedS/ensemble.json}.
# Environment: see scripts/image_prompts.sh (DATA, OUTPUT, RATES, OPTS), and METHOD.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,10p' "$0"; exit 2; }
source "$(dirname "$0")/image_prompts.sh"
DATASET=$1 K=$2 SEED=$3 METHOD="${METHOD:-CoOpML}"
dataset_setup "$DATASET" "$SEED"
taidpt_run "$DATASET" "$SEED"
SHOT_DIR="$OUTPUT/$DATASET/$METHOD/k$K/seed$SEED"
SHOT_OPTS=(DATASET.NUM_SHOTS "$K")
if [ "$METHOD" = CoOpML ]; then  # CoOp's epochs by shots (see the CoOpML configs' header)
  case "$K" in 1|2) EPOCHS=50 ;; 4|8) EPOCHS=100 ;; *) EPOCHS=200 ;; esac
  SHOT_OPTS+=(OPTIM.MAX_EPOCH "$EPOCHS")
fi
train_and_validate "$SHOT_DIR" "$METHOD" "$IMAGE_DATASET_CFG" "${SHOT_OPTS[@]}"
ensemble_on_val_then_test "$SHOT_DIR" "$OUTPUT/$DATASET/${METHOD}+TaIDPT/k$K/seed$SEED"

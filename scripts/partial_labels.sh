#!/usr/bin/env bash
# Paper Table 3, one cell: DualCoOp trained with a proportion P of known training labels, alone
# and ensembled with TaI-DPT (rate chosen on the val split).
#
#   bash scripts/partial_labels.sh DATASET P SEED     # DATASET: voc2007, coco2014, nuswide, synthetic
#   DATA=~/data bash scripts/partial_labels.sh voc2007 0.1 1
#
# Writes OUTPUT/DATASET/{TaIDPT/seedS, DualCoOp/pP/seedS, DualCoOpTaIDPT/pP/seedS/ensemble.json}.
# Environment: see scripts/image_prompts.sh (DATA, OUTPUT, RATES, OPTS).
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,9p' "$0"; exit 2; }
source "$(dirname "$0")/image_prompts.sh"
DATASET=$1 P=$2 SEED=$3
dataset_setup "$DATASET" "$SEED"
taidpt_run "$DATASET" "$SEED"
DUAL_DIR="$OUTPUT/$DATASET/DualCoOp/p$P/seed$SEED"
train_and_validate "$DUAL_DIR" DualCoOp "$IMAGE_DATASET_CFG" DATASET.PARTIAL_PROB "$P"
ensemble_on_val_then_test "$DUAL_DIR" "$OUTPUT/$DATASET/DualCoOpTaIDPT/p$P/seed$SEED"

#!/usr/bin/env bash
# Paper Figure 6: few-shot. CoOp for multi-label images (CoOpML; METHOD=CoCoOpML for CoCoOp) on K
# shots per class (SHOTS, default 1 2 4 8 16), alone and ensembled with TaI-DPT (rate on val).
#
#   DATA=~/data bash scripts/paper/fig6.sh     # -> OUTPUT/fig6.png beside the table
#   bash scripts/paper/fig6.sh --synthetic
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
SHOTS="${SHOTS:-1 2 4 8 16}"
METHOD="${METHOD:-CoOpML}"
cells() {
  taidpt_run
  for K in $SHOTS; do
    EPOCHS=()
    if [ "$METHOD" = CoOpML ]; then  # CoOp's epochs by shots (the CoOpML configs' header)
      case "$K" in 1|2) EPOCHS=(OPTIM.MAX_EPOCH 50) ;; 4|8) EPOCHS=(OPTIM.MAX_EPOCH 100) ;; *) EPOCHS=(OPTIM.MAX_EPOCH 200) ;; esac
    fi
    image_run "$RUN_ROOT/$METHOD/k$K/seed$SEED" "$METHOD" DATASET.NUM_SHOTS "$K" "${EPOCHS[@]}"
    ensemble_run "$RUN_ROOT/$METHOD/k$K/seed$SEED" "$RUN_ROOT/$METHOD+TaIDPT/k$K/seed$SEED"
  done
}
for_each_cell cells
run_plan fig6

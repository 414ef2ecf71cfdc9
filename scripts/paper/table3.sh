#!/usr/bin/env bash
# Paper Table 3: partial labels. DualCoOp trained with a proportion P of known training labels
# (PS, default 0.1 .. 0.9), alone and ensembled with TaI-DPT (rate chosen on val), on every dataset.
#
#   DATA=~/data bash scripts/paper/table3.sh
#   PS="0.1 0.5 0.9" DATASETS=voc2007 DATA=~/data bash scripts/paper/table3.sh
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
PS="${PS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9}"
cells() {
  taidpt_run
  for P in $PS; do
    image_run "$RUN_ROOT/DualCoOp/p$P/seed$SEED" DualCoOp DATASET.PARTIAL_PROB "$P"
    ensemble_run "$RUN_ROOT/DualCoOp/p$P/seed$SEED" "$RUN_ROOT/DualCoOpTaIDPT/p$P/seed$SEED"
  done
}
for_each_cell cells
run_plan table3

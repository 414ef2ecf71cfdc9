#!/usr/bin/env bash
# Paper Table 4: the training loss of TaI-DPT. BCE (the reference's 'sigmoid', our bce), ASL (the
# reference's 'asl', our asl_mean: mean over B x C) and the ranking loss (double_ranking, the Table 1
# run); TaI = the global head, TaI-DPT = the merged head of each run.
#
#   DATA=~/data bash scripts/paper/table4.sh
#   bash scripts/paper/table4.sh --synthetic
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
cells() {
  taidpt_run
  taidpt_run loss_bce TRAINER.TAIDPT.LOSS bce
  taidpt_run loss_asl_mean TRAINER.TAIDPT.LOSS asl_mean
}
for_each_cell cells
run_plan table4

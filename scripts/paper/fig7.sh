#!/usr/bin/env bash
# Paper Figure 7: the number of training captions. TaI-DPT trained on a random subset of N captions
# (CAPTIONS, default 1000 .. 64000; --synthetic: 100 .. 800) and on all of them (the Table 1 run).
#
#   DATA=~/data bash scripts/paper/fig7.sh     # -> OUTPUT/fig7.png beside the table
#   bash scripts/paper/fig7.sh --synthetic
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
if [ "$SYNTHETIC" = 1 ]; then CAPTIONS="${CAPTIONS:-100 200 400 800}"; fi
CAPTIONS="${CAPTIONS:-1000 2000 4000 8000 16000 32000 64000}"
cells() {
  taidpt_run
  for N in $CAPTIONS; do
    taidpt_run "captions_$N" DATASET.CAPTIONS.MAX_CAPTIONS "$N"
  done
}
for_each_cell cells
run_plan fig7

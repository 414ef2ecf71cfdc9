#!/usr/bin/env bash
# Paper Table 1: ZSCLIP and ZSCLIP+DPT (zero-shot CLIP, global and merged heads), TaI and TaI-DPT
# (the global and merged heads of TaI-DPT trained on captions only) on VOC2007, MS-COCO, NUS-WIDE.
#
#   DATA=~/data bash scripts/paper/table1.sh     # seeds 1 2 3 into output/paper, then the table
#   bash scripts/paper/table1.sh --synthetic     # the same loops on the synthetic world
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
cells() {
  zeroshot_run
  taidpt_run
}
for_each_cell cells
run_plan table1

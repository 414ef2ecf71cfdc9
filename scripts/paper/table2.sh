#!/usr/bin/env bash
# Paper Table 2: zero-shot CLIP vs TaI-DPT on the 16 novel classes of MS-COCO (SPEC 7: the LaSO
# split). TaI-DPT trains on captions labelled with the 64 base classes only (novel classes unseen)
# and is tested on the novel ones (DATASET.COCO2014.CLASSES base64 / novel16); with --synthetic
# the synthetic world's last quarter of classes plays the novel ones (DATASET.SYNTHETIC.CLASSES).
#
#   DATA=~/data bash scripts/paper/table2.sh
#   bash scripts/paper/table2.sh --synthetic
#
# Environment (DATA, OUTPUT, SEEDS, GPUS, DATASETS, RATES, OPTS, SYNTHETIC_WORLD) and flags
# (--synthetic, --dry-run): scripts/paper/common.sh; time and data per table: docs/REPRODUCE.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
paper_init "$@"
for SEED in $SEEDS; do
  dataset_setup coco2014 "$SEED"
  zeroshot_run novel "$CLASSES_KEY" "$NOVEL"
  taidpt_run base "$CLASSES_KEY" "$BASE"
  plan_eval "$RUN_ROOT/TaIDPT/novel/seed$SEED" TaIDPT "$CAPTION_CFG" "$TAIDPT_DIR" test \
    "$CLASSES_KEY" "$NOVEL" MODEL.ALLOW_OTHER_CLASSES True
done
run_plan table2

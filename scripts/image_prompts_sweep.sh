#!/usr/bin/env bash
# Every cell of the image-prompt side on one dataset and several seeds, then the table
# (docs/IMAGE_PROMPTS_RESULTS.md was made with this on the synthetic world):
#   zero-shot CLIP (the reference point);
#   partial labels: DualCoOp at P in $PS, alone and + TaI-DPT;
#   few-shot:       CoOpML at K in $SHOTS and CoCoOpML at K in $COCOOP_SHOTS, alone and + TaI-DPT.
#
#   bash scripts/image_prompts_sweep.sh DATASET SEED...       # e.g. synthetic 1 2 3
#
# Environment: PS (default 0.1 0.5 0.9), SHOTS (1 2 4 8 16), COCOOP_SHOTS (4 16), TABLE (the
# markdown written at the end, default OUTPUT/DATASET/image_prompts.md), and those of
# scripts/image_prompts.sh (DATA, OUTPUT, RATES, OPTS). Finished cells are skipped, so a rerun resumes.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
HERE="$(dirname "$0")"
source "$HERE/image_prompts.sh"
DATASET=$1; shift
export OUTPUT
TABLE="${TABLE:-$OUTPUT/$DATASET/image_prompts.md}"
for SEED in "$@"; do
  dataset_setup "$DATASET" "$SEED"
  zeroshot_run "$DATASET" "$SEED"
  for P in ${PS:-0.1 0.5 0.9}; do bash "$HERE/partial_labels.sh" "$DATASET" "$P" "$SEED"; done
  for K in ${SHOTS:-1 2 4 8 16}; do METHOD=CoOpML bash "$HERE/few_shot.sh" "$DATASET" "$K" "$SEED"; done
  for K in ${COCOOP_SHOTS:-4 16}; do METHOD=CoCoOpML bash "$HERE/few_shot.sh" "$DATASET" "$K" "$SEED"; done
done
"$PY" "$HERE/image_prompts_table.py" "$OUTPUT/$DATASET" --output "$TABLE"

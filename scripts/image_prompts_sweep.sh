#!/usr/bin/env bash
# Every cell of the image-prompt side on one dataset and several seeds, then its table
# (docs/IMAGE_PROMPTS_RESULTS.md was made with this on the synthetic world), through the paper
# scripts with the configs' full epochs: zero-shot CLIP and TaI-DPT (paper/table1.sh); partial
# labels, DualCoOp at P in $PS (paper/table3.sh); few-shot, CoOpML at K in $SHOTS and CoCoOpML at
# K in $COCOOP_SHOTS (paper/fig6.sh); each alone and + TaI-DPT, the rate chosen on val.
#
#   bash scripts/image_prompts_sweep.sh DATASET SEED...   # e.g. synthetic 1 2 3; DATA=~/data ... voc2007 1
#
# Environment: PS (default 0.1 0.5 0.9), SHOTS (1 2 4 8 16), COCOOP_SHOTS (4 16), OUTPUT (default
# output/image_prompts), TABLE (default OUTPUT/<dataset folder>/image_prompts.md) and those of
# scripts/paper/common.sh. Finished runs are skipped, so a rerun resumes.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/env.sh"
DATASET=$1; shift
export SEEDS="$*" FULL_EPOCHS=1 OUTPUT="${OUTPUT:-output/image_prompts}" DATASETS=$DATASET
FLAGS=()
FOLDER=$DATASET
if [ "$DATASET" = synthetic ]; then FLAGS=(--synthetic) DATASETS=voc2007 FOLDER=synthetic-voc2007; fi
bash "$HERE/paper/table1.sh" "${FLAGS[@]}"
PS="${PS:-0.1 0.5 0.9}" bash "$HERE/paper/table3.sh" "${FLAGS[@]}"
SHOTS="${SHOTS:-1 2 4 8 16}" METHOD=CoOpML bash "$HERE/paper/fig6.sh" "${FLAGS[@]}"
SHOTS="${COCOOP_SHOTS:-4 16}" METHOD=CoCoOpML bash "$HERE/paper/fig6.sh" "${FLAGS[@]}"
"$PY" "$HERE/image_prompts_table.py" "$OUTPUT/$FOLDER" --output "${TABLE:-$OUTPUT/$FOLDER/image_prompts.md}"

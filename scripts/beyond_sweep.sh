#!/usr/bin/env bash
# The runs behind `taidpt report OUTPUT --table beyond` (docs/BEYOND.md) on one
# dataset and several seeds. Every run is evaluated on test (OUT) and val (OUT/val) with the
# caption-prototype heads on (TRAINER.TAIDPT.PROTOTYPES.ENABLED: test-time only, training unchanged):
#   plain      TaI-DPT (trained here, or evaluated from $REUSE/TaIDPT/seed<S> when that run exists:
#              scripts/image_prompts_sweep.sh's);
#   meanshift  TaI-DPT trained with TRAINER.TAIDPT.MEAN_SHIFT True;
#   noise<STD> TaI-DPT trained with TRAINER.TAIDPT.NOISE_STD STD;
#   zsclip     zero-shot CLIP (nothing trained; TRAINER.ZEROSHOTCLIP.PROTOTYPES.ENABLED).
#
#   bash scripts/beyond_sweep.sh DATASET SEED...       # e.g. synthetic 1 2 3
#
# Environment: OUTPUT (default output/beyond; runs go to OUTPUT/DATASET/<variant>/seed<S>),
# VARIANTS (run in this order, default "plain zsclip meanshift noise0.02 noise0.1"), REUSE (default
# OUTPUT), JOBS (seeds at a time, default 1) and scripts/image_prompts.sh's DATA, OPTS. Finished
# runs are skipped, so a rerun resumes. It ends with the report of every dataset under OUTPUT
# (OUTPUT/report/beyond.md).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0"; exit 2; }
HERE="$(dirname "$0")"
OUTPUT="${OUTPUT:-output/beyond}"
source "$HERE/image_prompts.sh"
DATASET=$1; shift
REUSE="${REUSE:-$OUTPUT}"
JOBS="${JOBS:-1}"
PROTOTYPES=(TRAINER.TAIDPT.PROTOTYPES.ENABLED True)

# variant_run DIR [OPTS...]: train TaI-DPT into DIR with OPTS, then evaluate it on val (DIR/val).
variant_run() {
  local dir=$1
  shift
  train_and_validate "$dir" TaIDPT "$CAPTION_DATASET_CFG" "${PROTOTYPES[@]}" "$@"
}

# evaluate DIR FLAGS... -- OPTS...: train.py --eval-only FLAGS ... OPTS on test (into DIR) and val
# (DIR/val), unless done.
evaluate() {
  local dir=$1 flags=() split out
  shift
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  for split in test val; do
    out="$dir"; [ "$split" = val ] && out="$dir/val"
    [ -f "$out/results_$split.json" ] && continue
    say "evaluate on $split -> $out"
    "$PY" "$TAIDPT_ROOT/train.py" "${flags[@]}" "${COMMON[@]}" --eval-only --output-dir "$out" \
      "${COMMON_OPTS[@]}" "$@" TEST.SPLIT "$split"
  done
}

# reused_run MODEL_DIR DIR: evaluate a finished TaI-DPT run.
reused_run() {
  evaluate "$2" --trainer TaIDPT --dataset-config-file "$CAPTION_DATASET_CFG" \
    --config-file "$(method_cfg TaIDPT)" --model-dir "$1" -- "${PROTOTYPES[@]}"
}

# zeroshot_prototypes DIR: zero-shot CLIP with its prototype heads.
zeroshot_prototypes() {
  local cfg=()
  if [ -n "$CFG_SUFFIX" ]; then cfg=(--config-file "$CONFIGS/trainers/ZeroshotCLIP/rn50.yaml"); fi
  evaluate "$1" --trainer ZeroshotCLIP --dataset-config-file "$CAPTION_DATASET_CFG" "${cfg[@]}" \
    -- TRAINER.ZEROSHOTCLIP.PROTOTYPES.ENABLED True
}

seed_runs() {
  local seed=$1 base="$OUTPUT/$DATASET" variant
  dataset_setup "$DATASET" "$seed"
  for variant in ${VARIANTS:-plain zsclip meanshift noise0.02 noise0.1}; do
    case "$variant" in
      plain)
        if [ -f "$REUSE/$DATASET/TaIDPT/seed$seed/results_test.json" ]; then
          reused_run "$REUSE/$DATASET/TaIDPT/seed$seed" "$base/plain/seed$seed"
        else
          variant_run "$base/plain/seed$seed"
        fi ;;
      meanshift) variant_run "$base/meanshift/seed$seed" TRAINER.TAIDPT.MEAN_SHIFT True ;;
      noise*) variant_run "$base/$variant/seed$seed" TRAINER.TAIDPT.NOISE_STD "${variant#noise}" ;;
      zsclip) zeroshot_prototypes "$base/zsclip/seed$seed" ;;
      *) echo "unknown variant '$variant': plain, meanshift, noise<STD> or zsclip" >&2; exit 2 ;;
    esac
  done
}

running=0
for SEED in "$@"; do
  mkdir -p "$OUTPUT/$DATASET"
  seed_runs "$SEED" >> "$OUTPUT/$DATASET.seed$SEED.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait
"$PY" -m taidpt.cli report "$OUTPUT" --table beyond

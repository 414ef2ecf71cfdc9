# Sourced by scripts/beyond_sweep.sh (the paper scripts use scripts/paper/common.sh): one experiment of the paper's image-prompt side
# (an image-trained method, TaI-DPT, and their score ensemble with the rate chosen on val).
#
# Environment: DATA (DATASET.ROOT; unused for synthetic), OUTPUT (default output/image_prompts),
# RATES (ensemble rates swept on the val split, default 0.1 .. 0.9), OPTS (extra KEY VALUE opts
# for every train.py run). Runs whose results exist are skipped, so an interrupted loop resumes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUTPUT="${OUTPUT:-output/image_prompts}"
RATES="${RATES:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9}"
read -r -a EXTRA_OPTS <<< "${OPTS:-}"
CONFIGS="$TAIDPT_ROOT/configs"

say() { echo "[$(basename "$0")] $*"; }

# dataset_setup DATASET SEED: sets CAPTION_DATASET_CFG, IMAGE_DATASET_CFG, CFG_SUFFIX (the method
# YAML name per trainer: <prefix>_<suffix>.yaml), COMMON (flags) and COMMON_OPTS (opts).
dataset_setup() {
  local dataset=$1 seed=$2
  COMMON=(--seed "$seed")
  COMMON_OPTS=("${EXTRA_OPTS[@]}")
  case "$dataset" in
    synthetic)
      CAPTION_DATASET_CFG="$CONFIGS/datasets/synthetic.yaml"
      IMAGE_DATASET_CFG="$CONFIGS/datasets/synthetic.yaml"
      CFG_SUFFIX=""
      local clip
      clip=$("$PY" -m taidpt.cli synthetic --seed "$seed" --json | tail -n 1 \
             | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["tiny_clip"])')
      COMMON_OPTS+=(DATASET.SYNTHETIC.SEED "$seed" MODEL.BACKBONE.PATH "$clip") ;;
    voc2007|coco2014|nuswide)
      : "${DATA:?set DATA to the dataset root (see DATA.md)}"
      CAPTION_DATASET_CFG="$CONFIGS/datasets/${dataset}_caption.yaml"
      IMAGE_DATASET_CFG="$CONFIGS/datasets/${dataset}_partial.yaml"
      CFG_SUFFIX="$dataset"
      COMMON+=(--root "$DATA") ;;
    *) echo "unknown dataset '$dataset': choose voc2007, coco2014, nuswide or synthetic" >&2; exit 2 ;;
  esac
}

# method_cfg TRAINER: the trainer's YAML for the dataset (tiny_synthetic.yaml on the synthetic world).
method_cfg() {
  local trainer=$1
  if [ -z "$CFG_SUFFIX" ]; then echo "$CONFIGS/trainers/$trainer/tiny_synthetic.yaml"; return; fi
  ls "$CONFIGS/trainers/$trainer/"*"_${CFG_SUFFIX}.yaml" | grep -v _debug | head -n 1
}

# train_and_validate DIR TRAINER DATASET_CFG [OPTS...]: train into DIR (unless its test results
# exist), then evaluate the deployed model on val into DIR/val (unless done).
train_and_validate() {
  local dir=$1 trainer=$2 dataset_cfg=$3
  shift 3
  local args=(--trainer "$trainer" --dataset-config-file "$dataset_cfg"
              --config-file "$(method_cfg "$trainer")" "${COMMON[@]}")
  if [ -f "$dir/results_test.json" ]; then
    say "skip training $trainer: $dir/results_test.json exists"
  else
    say "train $trainer -> $dir"
    "$PY" "$TAIDPT_ROOT/train.py" "${args[@]}" --output-dir "$dir" "${COMMON_OPTS[@]}" "$@"
  fi
  if [ ! -f "$dir/val/results_val.json" ]; then
    say "evaluate $trainer on val -> $dir/val"
    "$PY" "$TAIDPT_ROOT/train.py" "${args[@]}" --eval-only --model-dir "$dir" --output-dir "$dir/val" \
      "${COMMON_OPTS[@]}" "$@" TEST.SPLIT val
  fi
}

# taidpt_run DATASET SEED: the TaI-DPT run shared by every experiment of that dataset and seed.
taidpt_run() {
  TAIDPT_DIR="$OUTPUT/$1/TaIDPT/seed$2"
  train_and_validate "$TAIDPT_DIR" TaIDPT "$CAPTION_DATASET_CFG"
}

# ensemble_on_val_then_test OTHER_DIR OUT_DIR: choose the rate on val, report it on test.
ensemble_on_val_then_test() {
  local other=$1 out=$2
  # shellcheck disable=SC2086
  "$PY" -m taidpt.cli ensemble "$TAIDPT_DIR/val" "$other/val" --split val --rate $RATES --output-dir "$out"
  local rate
  rate=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["best_rate"])' "$out/ensemble_val.json")
  say "rate chosen on val: $rate"
  "$PY" -m taidpt.cli ensemble "$TAIDPT_DIR" "$other" --split test --rate "$rate" --output-dir "$out"
}

# zeroshot_run DATASET SEED: zero-shot CLIP on the test split, the table's reference point.
zeroshot_run() {
  local dir="$OUTPUT/$1/ZeroshotCLIP/seed$2" cfg=()
  if [ -f "$dir/results_test.json" ]; then return; fi
  if [ -n "$CFG_SUFFIX" ]; then cfg=(--config-file "$CONFIGS/trainers/ZeroshotCLIP/rn50.yaml"); fi
  say "zero-shot CLIP -> $dir"
  "$PY" "$TAIDPT_ROOT/train.py" --trainer ZeroshotCLIP --dataset-config-file "$IMAGE_DATASET_CFG" \
    "${cfg[@]}" "${COMMON[@]}" --eval-only --output-dir "$dir" "${COMMON_OPTS[@]}"
}

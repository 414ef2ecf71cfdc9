# Sourced by scripts/paper/<table>.sh: the loops shared by every table and figure of the paper.
#
# A script plans its runs (skipping those whose results exist), prints the plan, runs it and ends
# with `taidpt report OUTPUT --table <name>`. Layout (what `taidpt report` reads):
#   OUTPUT/<dataset>/<method>[/<setting>]/seed<S>/results_test.json   (train.py)
#   OUTPUT/<dataset>/<method>[/<setting>]/seed<S>/ensemble.json       (taidpt ensemble)
# with <dataset> voc2007, coco2014, nuswide, or synthetic-<dataset> for --synthetic runs.
#
# Environment: DATA (DATASET.ROOT, see DATA.md; not needed with --synthetic), OUTPUT (default
# output/paper), SEEDS (default 1 2 3; --synthetic: 1), GPUS (default 1; > 1: every train.py run
# under torchrun --nproc_per_node GPUS; TORCHRUN: its path), DATASETS (default voc2007 coco2014
# nuswide), RATES (the ensemble rates tried on val, default 0.1 .. 0.9), OPTS (extra KEY VALUE
# opts for every train.py run), SYNTHETIC_WORLD (extra DATASET.SYNTHETIC.* opts with --synthetic,
# e.g. a smaller world), FULL_EPOCHS (1: the tiny_synthetic configs' own epochs with --synthetic,
# instead of a few).
# Flags: --synthetic (the same loops on the synthetic world of each seed and its tiny CLIP, with
# the configs/trainers/*/tiny_synthetic.yaml settings and few epochs; the folders are
# synthetic-<dataset>, the stand-in of each dataset: the same world, NUS-WIDE's with its image
# spatial temperature 4; synthetic-coco2014 links to synthetic-voc2007, whose runs it would
# repeat), --dry-run (print the plan only).
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
CONFIGS="$TAIDPT_ROOT/configs"
SCRIPT="$(basename "$0" .sh)"
PLAN=()
declare -A CLIP_OF=()  # seed -> the synthetic world's tiny CLIP
declare -A PLANNED=()  # output folders already in the plan
# With --synthetic (unless FULL_EPOCHS 1): the epochs of each trainer's trainings.
declare -A QUICK_EPOCHS=([TaIDPT]=3 [DualCoOp]=1 [CoOpML]=20 [CoCoOpML]=5)

say() { echo "[$SCRIPT] $*"; }

# paper_init "$@": parse the flags and the environment.
paper_init() {
  SYNTHETIC=0 DRY_RUN=0
  for arg in "$@"; do
    case "$arg" in
      --synthetic) SYNTHETIC=1 ;;
      --dry-run) DRY_RUN=1 ;;
      -h|--help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
      *) echo "$SCRIPT: unknown argument '$arg' (use --synthetic, --dry-run)" >&2; exit 2 ;;
    esac
  done
  OUTPUT="${OUTPUT:-output/paper}"
  GPUS="${GPUS:-1}"
  TORCHRUN="${TORCHRUN:-$(dirname "$PY")/torchrun}"  # torch's launcher beside the interpreter
  RATES="${RATES:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9}"
  DATASETS="${DATASETS:-voc2007 coco2014 nuswide}"
  FULL_EPOCHS="${FULL_EPOCHS:-0}"
  read -r -a EXTRA_OPTS <<< "${OPTS:-}"
  read -r -a WORLD_OPTS <<< "${SYNTHETIC_WORLD:-}"
  if [ "$SYNTHETIC" = 1 ]; then
    SEEDS="${SEEDS:-1}"
  else
    SEEDS="${SEEDS:-1 2 3}"
    : "${DATA:?set DATA to the datasets root (see DATA.md), or pass --synthetic}"
  fi
  mkdir -p "$OUTPUT"
}

# dataset_setup DATASET SEED: sets RUN_ROOT (OUTPUT/<dataset folder>), COMMON (flags and opts of
# every train.py run), CAPTION_CFG / IMAGE_CFG (dataset YAMLs for caption / image training),
# CLASSES_KEY / NOVEL / BASE (the Table 2 class subsets), SHARED_ROOT, and cfg_of (trainer YAMLs).
# SHARED_ROOT (--synthetic, NUS-WIDE's stand-in beside VOC2007's): the folder whose trainings
# this dataset's would repeat (the same world; only the image spatial temperature differs, and
# only TaI-DPT's evaluation reads it): its TaI-DPT prompts are evaluated with this dataset's
# settings instead of retrained, and its image-prompt runs are linked.
dataset_setup() {
  local dataset=$1 seed=$2
  COMMON=(--seed "$seed")
  SHARED_ROOT=""
  if [ "$SYNTHETIC" = 1 ]; then
    RUN_ROOT="$OUTPUT/synthetic-$dataset"
    if [ "$dataset" = nuswide ] && beside_voc_stand_in; then
      SHARED_ROOT="$OUTPUT/synthetic-voc2007"
    fi
    CAPTION_CFG="$CONFIGS/datasets/synthetic.yaml"
    IMAGE_CFG="$CAPTION_CFG"
    CFG_SUFFIX=""
    CLASSES_KEY=DATASET.SYNTHETIC.CLASSES NOVEL=novel BASE=base
    local world=(DATASET.SYNTHETIC.SEED "$seed" "${WORLD_OPTS[@]}")
    if [ -z "${CLIP_OF[$seed]:-}" ]; then  # build (or reuse) the world and its tiny CLIP once
      # shellcheck disable=SC2046
      CLIP_OF[$seed]=$("$PY" -m taidpt.cli synthetic --json $(world_flags "${world[@]}") | tail -n 1 \
                       | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["tiny_clip"])')
    fi
    COMMON+=("${world[@]}" MODEL.BACKBONE.PATH "${CLIP_OF[$seed]}")
    # the stand-in of NUS-WIDE uses its image spatial temperature (SPEC 3)
    if [ "$dataset" = nuswide ]; then COMMON+=(TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE 4.0); fi
  else
    case "$dataset" in voc2007|coco2014|nuswide) ;;
      *) echo "$SCRIPT: unknown dataset '$dataset' in DATASETS: use voc2007, coco2014, nuswide" >&2; exit 2 ;;
    esac
    RUN_ROOT="$OUTPUT/$dataset"
    CAPTION_CFG="$CONFIGS/datasets/paper/${dataset}_caption.yaml"
    IMAGE_CFG="$CONFIGS/datasets/${dataset}_partial.yaml"
    CFG_SUFFIX="$dataset"
    CLASSES_KEY=DATASET.COCO2014.CLASSES NOVEL=novel16 BASE=base64
    COMMON+=(--root "$DATA")
  fi
  COMMON+=("${EXTRA_OPTS[@]}")
}

# for_each_cell FUNCTION: dataset_setup for every seed and dataset of SEEDS x DATASETS (SEED and
# DATASET set), then FUNCTION, which plans that seed's and dataset's runs. With --synthetic, the
# VOC2007 and MS-COCO stand-ins are the same world with the same settings, so their runs would be
# the same: when both are in DATASETS, synthetic-coco2014 is a link to synthetic-voc2007 (unless
# it is already a folder of its own) and only the VOC2007 stand-in's runs are planned.
for_each_cell() {
  local plan_cell=$1 datasets=$DATASETS
  if beside_voc_stand_in; then  # first: the others share its runs
    datasets="voc2007 $(echo " $DATASETS " | sed 's/ voc2007 / /g')"
  fi
  for SEED in $SEEDS; do
    for DATASET in $datasets; do
      if [ "$DATASET" = coco2014 ] && beside_voc_stand_in && link_synthetic_coco; then
        continue
      fi
      dataset_setup "$DATASET" "$SEED"
      "$plan_cell"
    done
  done
}

# beside_voc_stand_in: true with --synthetic when DATASETS has voc2007 (the stand-in the others share).
beside_voc_stand_in() {
  [ "$SYNTHETIC" = 1 ] && [[ " $DATASETS " == *" voc2007 "* ]]
}

# link_synthetic_coco: make OUTPUT/synthetic-coco2014 a link to synthetic-voc2007 (false when it
# is a folder of its own: then it is planned like any other dataset).
link_synthetic_coco() {
  local link="$OUTPUT/synthetic-coco2014"
  if [ -L "$link" ]; then return 0; fi
  if [ -e "$link" ]; then return 1; fi
  if [ "$DRY_RUN" != 1 ]; then mkdir -p "$OUTPUT/synthetic-voc2007" && ln -s synthetic-voc2007 "$link"; fi
  say "synthetic-coco2014: the runs of synthetic-voc2007 (the same world and settings; a link)"
}

# world_flags KEY VALUE...: the DATASET.SYNTHETIC.* opts as `taidpt synthetic` flags.
world_flags() {
  while [ $# -ge 2 ]; do
    local key=${1#DATASET.SYNTHETIC.}
    case "$key" in
      PRETRAIN_STEPS) echo "--steps $2" ;;
      *) echo "--$(echo "$key" | tr 'A-Z_' 'a-z-') $2" ;;
    esac
    shift 2
  done
}

# cfg_of TRAINER: the trainer's YAML for the dataset (tiny_synthetic.yaml with --synthetic).
cfg_of() {
  local trainer=$1
  if [ -z "$CFG_SUFFIX" ]; then echo "$CONFIGS/trainers/$trainer/tiny_synthetic.yaml"; return; fi
  ls "$CONFIGS/trainers/$trainer/"*"_${CFG_SUFFIX}.yaml" | grep -v _debug | head -n 1
}

# plan WORDS...: add one taidpt command (e.g. `train ...`, `ensemble ...`) to the plan.
plan() {
  local line
  printf -v line '%q ' "$@"
  PLAN+=("${line% }")
}

# plan_train DIR TRAINER DATASET_CFG [OPTS...]: train into DIR unless DIR/results_test.json exists
# (with --synthetic, for QUICK_EPOCHS epochs).
plan_train() {
  local dir=$1 trainer=$2 dataset_cfg=$3 quick=()
  shift 3
  if [ -f "$dir/results_test.json" ]; then say "done: $dir"; return; fi
  if [ -n "${PLANNED[$dir]:-}" ]; then return; fi
  PLANNED[$dir]=1
  if [ "$SYNTHETIC" = 1 ] && [ "$FULL_EPOCHS" != 1 ]; then quick=(OPTIM.MAX_EPOCH "${QUICK_EPOCHS[$trainer]}"); fi
  plan train --trainer "$trainer" --dataset-config-file "$dataset_cfg" --config-file "$(cfg_of "$trainer")" \
    --output-dir "$dir" "${COMMON[@]}" "$@" "${quick[@]}"
}

# plan_eval DIR TRAINER DATASET_CFG MODEL_DIR SPLIT [OPTS...]: evaluate MODEL_DIR's model (none
# for ZeroshotCLIP: MODEL_DIR "") on SPLIT into DIR unless DIR/results_SPLIT.json exists.
plan_eval() {
  local dir=$1 trainer=$2 dataset_cfg=$3 model_dir=$4 split=$5 model=() cfg=()
  shift 5
  if [ -f "$dir/results_$split.json" ]; then say "done: $dir"; return; fi
  if [ -n "${PLANNED[$dir]:-}" ]; then return; fi
  PLANNED[$dir]=1
  if [ -n "$model_dir" ]; then model=(--model-dir "$model_dir"); fi
  if [ "$trainer" != ZeroshotCLIP ]; then
    cfg=(--config-file "$(cfg_of "$trainer")")
  elif [ -n "$CFG_SUFFIX" ]; then  # the synthetic world's tiny CLIP needs no trainer config
    cfg=(--config-file "$CONFIGS/trainers/ZeroshotCLIP/rn50.yaml")
  fi
  plan train --trainer "$trainer" --dataset-config-file "$dataset_cfg" "${cfg[@]}" --eval-only \
    "${model[@]}" --output-dir "$dir" "${COMMON[@]}" "$@" TEST.SPLIT "$split"
}

# zeroshot_run [SETTING [OPTS...]]: zero-shot CLIP on the test split -> ZS_DIR.
zeroshot_run() {
  local setting=${1:-}
  shift || true
  ZS_DIR="$RUN_ROOT/ZeroshotCLIP${setting:+/$setting}/seed$SEED"
  plan_eval "$ZS_DIR" ZeroshotCLIP "$CAPTION_CFG" "" test "$@"
}

# taidpt_run [SETTING [OPTS...]]: TaI-DPT trained on the dataset's captions -> TAIDPT_DIR, its
# model in TAIDPT_MODEL (SETTING "" is the run shared by Tables 1, 3, 4 and the figures). With a
# SHARED_ROOT: the prompts trained there (same setting), evaluated on test into TAIDPT_DIR.
taidpt_run() {
  local setting=${1:-}
  shift || true
  TAIDPT_DIR="$RUN_ROOT/TaIDPT${setting:+/$setting}/seed$SEED"
  if [ -n "$SHARED_ROOT" ]; then
    TAIDPT_MODEL="$SHARED_ROOT${TAIDPT_DIR#"$RUN_ROOT"}"
    plan_eval "$TAIDPT_DIR" TaIDPT "$CAPTION_CFG" "$TAIDPT_MODEL" test "$@"
  else
    TAIDPT_MODEL="$TAIDPT_DIR"
    plan_train "$TAIDPT_DIR" TaIDPT "$CAPTION_CFG" "$@"
  fi
}

# image_run DIR TRAINER [OPTS...]: an image-prompt method trained on the training images -> DIR,
# then evaluated on val into DIR/val (for the ensemble rate). With a SHARED_ROOT: DIR is a link
# to the same run there.
image_run() {
  local dir=$1 trainer=$2
  shift 2
  if [ -n "$SHARED_ROOT" ]; then link_run "$dir"; return; fi
  plan_train "$dir" "$trainer" "$IMAGE_CFG" "$@"
  plan_eval "$dir/val" "$trainer" "$IMAGE_CFG" "$dir" val "$@"
}

# link_run DIR: DIR becomes a link to the same run under SHARED_ROOT (kept when it exists).
link_run() {
  local dir=$1
  if [ -e "$dir" ] || [ -L "$dir" ]; then return; fi
  if [ "$DRY_RUN" != 1 ]; then mkdir -p "$(dirname "$dir")" && ln -sr "$SHARED_ROOT${dir#"$RUN_ROOT"}" "$dir"; fi
  say "link: $dir -> $SHARED_ROOT${dir#"$RUN_ROOT"} (the same training)"
}

# ensemble_run OTHER_DIR OUT_DIR: TaI-DPT (TAIDPT_DIR, model TAIDPT_MODEL) + OTHER_DIR, the rate
# chosen on val (both evaluated on val with the image dataset's val split), reported on test.
ensemble_run() {
  local other=$1 out=$2
  plan_eval "$TAIDPT_DIR/val" TaIDPT "$IMAGE_CFG" "$TAIDPT_MODEL" val
  if [ -f "$out/ensemble.json" ]; then say "done: $out"; return; fi
  # shellcheck disable=SC2086
  plan ensemble "$TAIDPT_DIR/val" "$other/val" --split val --rate $RATES --output-dir "$out"
  plan ensemble "$TAIDPT_DIR" "$other" --rate-from "$out/ensemble_val.json" --output-dir "$out"
}

# run_plan TABLE: print the plan, run it (one process, or each train.py run under torchrun when
# GPUS > 1), then print the report of TABLE.
run_plan() {
  local table=$1
  say "${#PLAN[@]} command(s) to run (OUTPUT=$OUTPUT, SEEDS=$SEEDS, GPUS=$GPUS$([ "$SYNTHETIC" = 1 ] && echo ', synthetic'))"
  local line
  for line in "${PLAN[@]}"; do say "  taidpt $line"; done
  if [ "$DRY_RUN" = 1 ]; then return; fi
  if [ "${#PLAN[@]}" -gt 0 ]; then
    if [ "$GPUS" -gt 1 ]; then
      for line in "${PLAN[@]}"; do
        eval "set -- $line"
        if [ "$1" = train ]; then
          shift
          "$TORCHRUN" --nproc_per_node "$GPUS" "$TAIDPT_ROOT/train.py" "$@"
        else
          "$PY" -m taidpt.cli "$@"
        fi
      done
    else
      local file="$OUTPUT/.plan-$SCRIPT.txt"
      printf '%s\n' "${PLAN[@]}" > "$file"
      "$PY" -m taidpt.cli batch "$file"
    fi
  fi
  "$PY" -m taidpt.cli report "$OUTPUT" --table "$table"
}

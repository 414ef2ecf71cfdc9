#!/usr/bin/env bash
# README command 1: the main job on the embedded default. Installs taidpt if needed, builds the
# synthetic world and its tiny CLIP (cached in $TAIDPT_CACHE, default ~/.cache/taidpt), runs
# zero-shot CLIP, TaI-DPT and the linear-probe reference through train.py, prints the table.
# Options: --seeds 1 2 3, --output-dir DIR, --quick (a small world, for CI). See --help.
source "$(dirname "$0")/env.sh"
cd "$TAIDPT_ROOT"
exec "$PY" scripts/quickstart.py "$@"

#!/usr/bin/env bash
# README command 2: install (if needed) and run the whole test suite, slow tests included.
source "$(dirname "$0")/env.sh"
cd "$TAIDPT_ROOT"
exec "$PY" -m pytest tests -q -p no:cacheprovider --durations=15 "$@"

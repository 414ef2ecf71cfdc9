# Sourced by the other scripts: use the active virtualenv / conda env, else create ./.venv, and
# (re)install taidpt with its dev extras when setup.py changed since the last install.
set -euo pipefail
TAIDPT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ]; then
  PY="$CONDA_PREFIX/bin/python"
else
  if [ ! -x "$TAIDPT_ROOT/.venv/bin/python" ]; then
    echo "[taidpt] creating $TAIDPT_ROOT/.venv"
    python3 -m venv "$TAIDPT_ROOT/.venv"
  fi
  PY="$TAIDPT_ROOT/.venv/bin/python"
fi
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.taidpt-install-stamp"
WANT="$(cat "$TAIDPT_ROOT/setup.py" | sha256sum | cut -d' ' -f1) $TAIDPT_ROOT"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[taidpt] installing taidpt and its dependencies into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --disable-pip-version-check -q -e "$TAIDPT_ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
export PY TAIDPT_ROOT

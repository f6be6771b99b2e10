# Sourced by quickstart.sh and test.sh: create .venv and install metawm into it, once.
# torch is installed first and on its own so that pip never pulls a multi-GB CUDA build on a
# CPU machine. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url
# https://download.pytorch.org/whl/cu124" on a GPU machine), or install torch yourself first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${METAWM_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import metawm, torch, pytest, higher" 2>/dev/null || [ ! -f "$VENV/.metawm-installed" ] \
   || [ pyproject.toml -nt "$VENV/.metawm-installed" ]; then
  echo "installing metawm into $VENV (a minute or two)..." >&2
  python -m pip install -q --upgrade pip 2>/dev/null
  python -c "import torch" 2>/dev/null || python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
  python -m pip install -q -e ".[test]"
  touch "$VENV/.metawm-installed"
fi

#!/usr/bin/env bash
# Set-up command 2: install (if needed) and run the tests. When this machine can run a real
# single-node SLURM (sbatch present, or root with apt-get), it is started for the SLURM tests and
# stopped afterwards; otherwise those tests are skipped with a reason. Extra arguments go to pytest.
source "$(dirname "$0")/_install.sh"
# A short state path: SLURM's and munge's socket paths must stay under ~100 characters.
export METAWM_SLURM_DIR="${METAWM_SLURM_DIR:-/tmp/metawm-slurm-$(id -u)}"
if command -v sbatch >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }; then
  if eval "$(bash slurm/start_local.sh)"; then
    trap 'bash slurm/stop_local.sh >/dev/null 2>&1 || true' EXIT
  else
    echo "could not start the local SLURM; its tests will be skipped" >&2
  fi
fi
export WANDB_MODE=offline WANDB_SILENT=true
python -m pytest -q "$@"

#!/usr/bin/env bash
# Set-up command 1: install (if needed) and run metawm's main job on the embedded defaults:
# an Optuna study (journal file, no server) whose trials run as local worker processes,
# tracked in offline W&B (no account, no network). Extra arguments go to metawm.sweep.
source "$(dirname "$0")/_install.sh"
python -m metawm.sweep +task=cartpole_physics +exp=smoke "$@"

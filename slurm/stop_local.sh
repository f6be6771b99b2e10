#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm/start_local.sh.
#
# Usage:  slurm/stop_local.sh            (state directory: $METAWM_SLURM_DIR or <repo>/.slurm)
#
# Stops exactly the daemons whose PIDs start_local.sh recorded (slurmd, slurmctld, then
# munged): SIGTERM, wait up to METAWM_SLURM_STOP_WAIT seconds (default 10), then SIGKILL.
# Removes the PID files. Safe to run twice, or when nothing was started. Keeps slurm.conf,
# logs and state, so a failed run can still be inspected; `rm -rf .slurm` resets everything.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${METAWM_SLURM_DIR:-$REPO_ROOT/.slurm}"
STOP_WAIT="${METAWM_SLURM_STOP_WAIT:-10}"

log() { echo "[stop_local] $*" >&2; }

if [[ ! -d "$DIR" ]]; then
    log "no state directory $DIR: nothing to stop"
    exit 0
fi
DIR="$(cd "$DIR" && pwd)"
source "$REPO_ROOT/slurm/_common.sh"   # daemon_pid, is_running

# Cancel the jobs still queued or running first, while slurmctld and slurmd are up.
# slurmstepd (which runs each job) detaches from slurmd, so stopping slurmd alone would leave
# running jobs behind as orphans, and a pending job would run again at the next start.
if daemon_pid slurmctld >/dev/null && daemon_pid slurmd >/dev/null; then
    export SLURM_CONF="$DIR/slurm.conf"
    jobs="$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    if [[ -n "${jobs// /}" ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 $(( 4 * (STOP_WAIT + 5) ))); do   # KillWait=5 s, then SIGKILL
            [[ -z "$(squeue -h -t RUNNING,COMPLETING,PENDING -o '%A' 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
fi

stopped=0
# slurmd and slurmctld before munged: they still talk to munged while shutting down.
for name in slurmd slurmctld munged; do
    pidfile="$DIR/$name.pid"
    if ! pid="$(daemon_pid "$name")"; then
        [[ -e "$pidfile" ]] && log "$name: not running (stale PID file removed)"
        rm -f "$pidfile"
        continue
    fi
    log "stopping $name ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(( 10 * STOP_WAIT ))); do
        is_running "$pid" || break
        sleep 0.1
    done
    if is_running "$pid"; then
        log "$name ($pid) still alive after ${STOP_WAIT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do is_running "$pid" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
    stopped=$(( stopped + 1 ))
done
if (( stopped )); then
    log "stopped $stopped daemon(s) (config, logs and state kept in $DIR)"
else
    log "nothing running from $DIR"
fi

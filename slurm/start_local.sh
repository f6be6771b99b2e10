#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine, for CI and tests.
#
# Usage (as root, from anywhere):
#     eval "$(slurm/start_local.sh)"      # or: slurm/start_local.sh && source .slurm/env.sh
#     ...sbatch / submitit ...
#     slurm/stop_local.sh
#
# Everything lives in one state directory: $METAWM_SLURM_DIR, default <repo>/.slurm/
# (git-ignored). It holds slurm.conf, env.sh, the daemons' PID files, logs, spool and
# state, and a private munge instance (key + socket), so nothing under /etc is changed and
# a munged already running on the system is neither used nor disturbed.
#
# Idempotent: if the daemons recorded in the state directory are still alive it says so,
# prints the env line again and exits 0.
#
# stdout carries exactly one line, `export SLURM_CONF=...`, for `eval`; all progress and
# error messages go to stderr.
#
# Environment knobs (all optional):
#     METAWM_SLURM_DIR            state directory (default <repo>/.slurm)
#     METAWM_SLURM_CPUS           CPUs to declare for the node (default: nproc)
#     METAWM_SLURM_MEM_MARGIN_MB  memory kept back from SLURM (default: max(1024, 10%))
#     METAWM_SLURM_TIMEOUT        seconds to wait for the node to be idle (default 60)
#     METAWM_SLURMCTLD_PORT       slurmctld port (default 6817)
#     METAWM_SLURMD_PORT          slurmd port (default 6818)

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${METAWM_SLURM_DIR:-$REPO_ROOT/.slurm}"
TIMEOUT="${METAWM_SLURM_TIMEOUT:-60}"
CTLD_PORT="${METAWM_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${METAWM_SLURMD_PORT:-6818}"
PARTITION="local"   # also written in slurm/local.yaml
NODE="localhost"    # the node's SLURM name; the machine's host name does not matter

log() { echo "[start_local] $*" >&2; }
die() { echo "[start_local] ERROR: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and runs munged as user munge)"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"   # absolute: it is written into slurm.conf and env.sh
CONF="$DIR/slurm.conf"
ENV_LINE="export SLURM_CONF='$CONF'"

# Pitfall: unix sockets have a 108-byte path limit. munged's socket and slurmd's per-step
# sockets (<spool>/localhost_<jobid>.<stepid>) live under $DIR, so keep it short.
(( ${#DIR} <= 60 )) || die "state directory path too long (${#DIR} > 60 chars, unix socket limit): $DIR; set METAWM_SLURM_DIR to a shorter path"

source "$REPO_ROOT/slurm/_common.sh"   # daemon_pid, is_running

tail_logs() {  # the end of each daemon's log file (or of its stdout, if it died before logging)
    local d f
    for d in munged slurmctld slurmd; do
        f="$DIR/log/$d.log"
        [[ -s "$f" ]] || f="$DIR/log/$d.stdout"
        [[ -s "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 15 "$f" >&2
    done
}

# --- already running? ---------------------------------------------------------------------
alive=()
for d in munged slurmctld slurmd; do
    if pid="$(daemon_pid "$d")"; then alive+=("$d($pid)"); fi
done
if (( ${#alive[@]} == 3 )); then
    log "cluster already running from $DIR: ${alive[*]}"
    export SLURM_CONF="$CONF"
    sinfo -N -o '%N %P %T %c %m' >&2 || true
    echo "$ENV_LINE"
    exit 0
elif (( ${#alive[@]} > 0 )); then
    log "partial cluster found (${alive[*]}); stopping it before a fresh start"
    METAWM_SLURM_DIR="$DIR" "$REPO_ROOT/slurm/stop_local.sh" >&2
fi

# --- packages -----------------------------------------------------------------------------
if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge with apt-get (about 15 s)"
    # Pitfall: on hosts with systemd/sysvinit, package postinst scripts start the stock
    # munge/slurm services (system-wide config, default ports). A temporary policy-rc.d
    # that answers 101 ("action forbidden") stops that; we run our own daemons below.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_ok=1
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
        >"$DIR/apt.log" 2>&1 || apt_ok=0
    if (( added_policy )); then rm -f /usr/sbin/policy-rc.d; fi
    if (( ! apt_ok )); then tail -n 30 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"; fi
fi

# --- private munge instance ---------------------------------------------------------------
# munged runs as user munge (as packaged) and insists that its key, socket and pid files
# sit in a directory owned by that user and writable by nobody else; clients (slurm
# daemons, sbatch, jobs) must still be able to traverse it to reach the socket: mode 0711.
id munge >/dev/null 2>&1 || die "user 'munge' missing (the munge package creates it)"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
mkdir -p "$MUNGE_DIR" "$DIR/log" "$DIR/state" "$DIR/spool"
chown munge:munge "$MUNGE_DIR"
chmod 0711 "$MUNGE_DIR"
if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
    log "creating munge key $MUNGE_DIR/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    else
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
fi
chown munge:munge "$MUNGE_DIR/munge.key"
chmod 0400 "$MUNGE_DIR/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"   # stale socket from a killed munged

# --- resources ----------------------------------------------------------------------------
CPUS="${METAWM_SLURM_CPUS:-$(nproc)}"
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# In a container the cgroup limit may be lower than what /proc/meminfo reports.
for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
    if [[ -r "$f" ]] && lim="$(cat "$f")" && [[ "$lim" =~ ^[0-9]+$ ]]; then
        (( lim / 1048576 < mem_mb )) && mem_mb=$(( lim / 1048576 ))
    fi
done
margin=$(( mem_mb / 10 > 1024 ? mem_mb / 10 : 1024 ))
margin="${METAWM_SLURM_MEM_MARGIN_MB:-$margin}"
REAL_MEM=$(( mem_mb - margin ))
(( REAL_MEM >= 512 )) || die "too little memory for SLURM: ${mem_mb} MB total, margin ${margin} MB"
# Pitfall: without DefMemPerCPU a job that asks for no memory is given the whole node's
# memory, so array tasks run one at a time. Giving each CPU an equal share lets all CPUs be
# used at once by default (jobs that ask for --mem get what they ask for).
DEF_MEM_PER_CPU=$(( REAL_MEM / CPUS ))

# --- slurm.conf ---------------------------------------------------------------------------
# No cgroup.conf: with proctrack/linuxproc and task/none, SLURM uses no cgroups at all
# (cgroup plugins need a delegated cgroup v2 tree, which containers and CI often lack).
# The price: memory and CPU limits are bookkeeping only, not enforced.
cat >"$CONF" <<EOF
# Generated by slurm/start_local.sh -- single-node test cluster. Do not edit; rerun the script.
ClusterName=metawm-local
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root

# Private munge instance (socket under the state directory).
AuthType=auth/munge
CredType=cred/munge
# Pitfall: a requeued job cannot start again until the launch credential of its previous
# run has expired, 120 s by default; 10 s makes requeue round trips quick.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10

# No cgroups, no accounting daemon (slurmdbd). Without accounting, 'sacct' fails: submitit
# logs a harmless "Bypassing sacct error" warning on each poll and job.state is UNKNOWN.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true

# Schedule cores and memory, so several jobs/array tasks share the node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Pitfall: default intervals (30 s backfill, 60 s main loop) make a requeued job sit pending
# long after its credential expired; a small test cluster can afford to schedule often.
# (Backfill skips passes when no job or node changed, and a requeued job merely becoming
# eligible is no change, so the main loop starts it: measured requeue -> running was
# 15 s with sched_interval=5 and 11-12 s with 2, i.e. cred_expire plus ~1 s.)
SchedulerParameters=bf_interval=2,sched_interval=2
DefMemPerCPU=$DEF_MEM_PER_CPU

# Batch jobs may be requeued (submitit's checkpoint/preemption handling runs
# 'scontrol requeue <jobid>').
JobRequeue=1
# A node that stopped responding (e.g. slurmd restarted) returns to service on registering.
ReturnToService=2
SlurmdTimeout=30
# Seconds between SIGTERM and SIGKILL when a job is cancelled or times out.
KillWait=5
# Finished jobs stay visible in squeue/scontrol for 30 s only (default 300).
MinJobAge=30
InactiveLimit=0
# Trust the CPU/memory figures below even if they differ from the detected hardware
# (otherwise a mismatch drains the node, e.g. when METAWM_SLURM_CPUS > cores).
SlurmdParameters=config_overrides

StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/state/slurmctld.pidfile
SlurmdPidFile=$DIR/spool/slurmd.pidfile
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# The node is called "localhost" whatever this machine's host name is (slurmd -N localhost).
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
echo "$ENV_LINE" >"$DIR/env.sh"
export SLURM_CONF="$CONF"
log "wrote $CONF (CPUs=$CPUS RealMemory=${REAL_MEM}MB DefMemPerCPU=${DEF_MEM_PER_CPU}MB partition=$PARTITION)"

# --- start the daemons --------------------------------------------------------------------
# Each runs in the foreground of its own session (setsid: the caller's Ctrl-C or the end of
# its terminal does not reach it), with stdin/stdout/stderr on files: a caller that captures
# our output (subprocess.run(capture_output=True), $(...)) would otherwise wait on the pipe
# until the daemons exit. setsid does not fork here (we are not a process group leader), so
# $! is the daemon's own PID; setpriv execs as well, so munged's PID is recorded too.
start_daemon() {  # start_daemon NAME CMD...
    local name="$1"; shift
    setsid "$@" </dev/null >"$DIR/log/$name.stdout" 2>&1 &
    echo "$!" >"$DIR/$name.pid"
}

failed_start() {
    echo "[start_local] ERROR: $*" >&2
    tail_logs
    METAWM_SLURM_DIR="$DIR" "$REPO_ROOT/slurm/stop_local.sh" >&2 || true
    exit 1
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD... : poll CMD until it succeeds
    local secs="$1" what="$2"; shift 2
    local deadline=$(( SECONDS + secs ))
    until "$@" >/dev/null 2>&1; do
        for d in munged slurmctld slurmd; do
            # (is_running, not daemon_pid: just after the fork the child may not have exec'd yet)
            if [[ -s "$DIR/$d.pid" ]] && ! is_running "$(cat "$DIR/$d.pid")"; then
                failed_start "$d exited while waiting for $what"
            fi
        done
        (( SECONDS < deadline )) || failed_start "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

rm -f "$DIR"/munged.pid "$DIR"/slurmctld.pid "$DIR"/slurmd.pid
t0=$(date +%s%N)

start_daemon munged setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed"
# (in the foreground munged logs to stderr, i.e. log/munged.stdout; slurm's
#  "Unauthorized credential for client UID=0" lines there are informational)
wait_for 15 "munged" bash -c "munge -n --socket='$MUNGE_SOCKET' | unmunge --socket='$MUNGE_SOCKET'"

# -i: ignore unreadable state files from an earlier run instead of refusing to start.
start_daemon slurmctld slurmctld -D -i -f "$CONF"
wait_for 30 "slurmctld" scontrol ping

# -N localhost: this slurmd is node "localhost" although the host name is something else.
start_daemon slurmd slurmd -D -N "$NODE" -f "$CONF"

node_usable() {
    local state
    state="$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null)"
    [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]]
}
wait_for "$TIMEOUT" "node $NODE to become idle (sinfo)" node_usable

elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log "cluster up in $(( elapsed_ms / 1000 )).$(printf %03d $(( elapsed_ms % 1000 )))s (daemons started -> node idle): munged($(cat "$DIR/munged.pid")) slurmctld($(cat "$DIR/slurmctld.pid")) slurmd($(cat "$DIR/slurmd.pid"))"
sinfo -N -o '%N %P %T %c %m' >&2
log "use it with: source $DIR/env.sh   (or: $ENV_LINE)"
echo "$ENV_LINE"

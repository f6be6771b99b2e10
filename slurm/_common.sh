# Helpers shared by start_local.sh and stop_local.sh (sourced; expects $DIR to be set).

# is_running PID: the process exists and is not a zombie.
is_running() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# daemon_pid NAME: print the PID recorded in $DIR/NAME.pid if that daemon is still alive.
# A PID file only counts if its process is running, has the expected name and was started
# with this state directory on its command line: this guards against PID reuse and against
# touching another cluster's daemons.
daemon_pid() {
    local name="$1" pidfile="$DIR/$1.pid" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && is_running "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR" || return 1
    echo "$pid"
}

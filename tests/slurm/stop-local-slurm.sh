#!/usr/bin/env bash
# stop-local-slurm.sh - stop what start-local-slurm.sh started, using only its pid files.
#
#   stop-local-slurm.sh           end all jobs, then stop slurmd, slurmctld, slurmdbd, mariadbd, munged
#   stop-local-slurm.sh --purge   the same, then delete the state under $SLURM_LAB (job ids restart
#                                 at 1, the accounting database is wiped) and the config files
#                                 start-local-slurm.sh wrote
#
# Processes are found by the pid files in $SLURM_LAB/run and signalled by pid only, and only if
# /proc/PID/comm still names the expected daemon: a stale pid file is never trusted blindly.
# A munged that was running before start-local-slurm.sh (it has no pid file of ours) is left alone.
set -euo pipefail

SLURM_LAB=${SLURM_LAB:-/tmp/slurmlab}
RUN=$SLURM_LAB/run
CONF_DIR=/etc/slurm
MARKER="# managed-by: start-local-slurm.sh"
case ${1:-} in
    "") PURGE=0 ;;
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

T0=${EPOCHREALTIME/./}
say() {
    local t=$(( (${EPOCHREALTIME/./} - T0) / 100000 ))
    printf '[stop-local-slurm %3d.%ds] %s\n' $((t / 10)) $((t % 10)) "$*"
}

# alive PID NAME: a live process named NAME. `kill -0` is not enough: exited daemons stay zombies
# until PID 1 (not an init here) reaps them.
alive() {
    [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# stop_daemon NAME [GRACE_SECONDS]: SIGTERM, wait, SIGKILL only as a last resort (never needed for
# slurmctld in practice: it saves its state on SIGTERM, and a kill -9 loses recently submitted jobs)
stop_daemon() {
    local name=$1 grace=${2:-20} pid i
    pid=$(pid_of "$name")
    [ -n "$pid" ] || return 0
    if ! alive "$pid" "$name"; then
        say "$name: not running (stale pid file)"
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
        alive "$pid" "$name" || break
        sleep 0.2
    done
    if alive "$pid" "$name"; then
        say "$name ($pid) ignored SIGTERM for ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    say "$name ($pid) stopped"
    rm -f "$RUN/$name.pid"
}

# 1. Jobs first: slurmstepd and the job processes outlive slurmd by design (for slurmd restarts).
#    We are tearing the cluster down, so job processes get SIGKILL at once, by the pids slurmd itself
#    reports (scontrol listpids). Any scancel, even `scancel --signal=KILL`, goes through Slurm's
#    termination sequence (SIGTERM, SIGKILL only after KillWait=30 s), so a job that ignores SIGTERM
#    would hold the stop up for 30 s.
jobs_left() { [ -n "$(squeue -h -o %i 2>/dev/null)" ]; }
kill_job_pids() {
    local pids
    alive "$(pid_of slurmd)" slurmd || return 0
    mapfile -t pids < <(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ && $1 > 1 {print $1}' | sort -u)
    if [ ${#pids[@]} -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
}
if alive "$(pid_of slurmctld)" slurmctld && jobs_left; then
    say "ending jobs: $(squeue -h -o %F | sort -u | xargs)" # %F: the array job id (or the job id)
    scancel --quiet --state=PENDING 2>/dev/null || true
    kill_job_pids
    for ((i = 0; i < 45 * 5; i++)); do
        jobs_left || break
        if ((i % 10 == 0)); then # whatever is still listed (requeued, completing...): cancel, kill
            mapfile -t ids < <(squeue -h -o %F | sort -u)
            if [ ${#ids[@]} -gt 0 ]; then scancel --quiet "${ids[@]}" 2>/dev/null || true; fi
            kill_job_pids
        fi
        sleep 0.2
    done
    if jobs_left; then say "WARNING: jobs still listed: $(squeue -h -o %i | xargs)"; fi
fi

# 2. Daemons, in reverse start order
stop_daemon slurmd
stop_daemon slurmctld
stop_daemon slurmdbd
stop_daemon mariadbd 60 # a clean InnoDB shutdown can take a few seconds
rm -f "$RUN/mariadbd.pid" # a symlink to the pid file mariadbd writes under $SLURM_LAB/mysql-run
if [ -e "$RUN/munged.pid" ]; then
    stop_daemon munged
    rm -f /run/munge/munged.pid
fi

# 3. Purge: state and database together. Wiping only the state restarts job ids at 1 while the
#    database keeps the old records, and sacct (so submitit) would then report stale states.
if [ "$PURGE" = 1 ]; then
    for f in slurm.conf slurmdbd.conf gres.conf; do
        if [ -e "$CONF_DIR/$f" ] && grep -qF "$MARKER" "$CONF_DIR/$f"; then rm -f "$CONF_DIR/$f"; fi
    done
    rm -rf "$SLURM_LAB/state" "$SLURM_LAB/fakegpu" "$SLURM_LAB/mysql" "$SLURM_LAB/mysql-run" \
        "$SLURM_LAB/run" "$SLURM_LAB/log"
    say "purged state, logs, database and config under $SLURM_LAB and $CONF_DIR"
fi
say "done"

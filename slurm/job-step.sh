# Sourced by slurm/array.sh and slurm/final.sh (from the project folder: Slurm runs a spool copy of the batch
# script, so it cannot find its neighbours from $0). Defines `run_preemptible TARGET ARGS...`, which runs
# `python -m job ARGS...` (inside the image when MNIST_CV_IMAGE is set) and requeues TARGET on the time-limit warning.
# shellcheck shell=bash

# An array task by the id its log file and squeue show (123_4); SLURM_JOB_ID is its own raw id (127).
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    task_id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (job ${SLURM_JOB_ID})"
else
    task_id=${SLURM_JOB_ID}
fi
echo "job ${task_id} (${SLURM_JOB_NAME}) on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, in $PWD"

# The task's command line comes from job.launch.argv, the one place that builds it (submit uses it too): the image
# wrapping and binds, and the environment telling the job its commit (read here on the host: images carry no git)
# and its image's digest. It needs only the standard library, so the host's python3 will do.
task_command() {
    local argv_file rc
    argv_file=$(mktemp) || return 1
    "${MNIST_CV_PYTHON:-python3}" -m job.launch.argv --nul -- "$@" >"$argv_file"
    rc=$?
    [ "$rc" = 0 ] && mapfile -d '' job <"$argv_file"
    rm -f "$argv_file"
    return "$rc"
}

# The warning signal (USR1, from #SBATCH --signal=B:USR1@...) and scancel/preemption (TERM) both reach the
# batch shell; the job checkpoints at its next safe point and exits 3. Only for the warning does the job
# requeue itself: the decision is made here on the host because many images lack scontrol, and only TARGET
# (this array task, not the whole array) is requeued.
run_preemptible() {
    local target=$1 requeue=0 child='' rc
    shift
    task_command "$@" || return 1
    trap 'requeue=1; [ -n "$child" ] && kill -USR1 "$child" 2>/dev/null' USR1
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
    "${job[@]}" &
    child=$!
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"  # returns early whenever a trap runs; keep waiting until the job has exited
    done
    wait "$child"
    rc=$?
    # Any unfinished exit counts: a warning that lands before the job installs its handler kills it (138).
    if [ "$requeue" = 1 ] && [ "$rc" != 0 ]; then
        echo "time limit near: requeueing $target to resume from its checkpoint"
        scontrol requeue "$target"
    fi
    return "$rc"
}

# Sourced by slurm/array.sh and slurm/final.sh (from the project folder: Slurm runs a spool copy of the batch
# script, so it cannot find its neighbours from $0). Defines `run_preemptible TARGET ARGS...`, which runs
# `python -m job ARGS...` (inside $MNIST_CV_IMAGE when set) and requeues TARGET on the time-limit warning.
# shellcheck shell=bash

echo "job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, in $PWD"

# The commit is read here on the host: images carry no git, and the job records what it is told.
if [ -z "${MNIST_CV_GIT_COMMIT:-}" ] && MNIST_CV_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null); then
    MNIST_CV_GIT_DIRTY=0
    [ -n "$(git status --porcelain --untracked-files=no)" ] && MNIST_CV_GIT_DIRTY=1
    export MNIST_CV_GIT_COMMIT MNIST_CV_GIT_DIRTY
fi

if [ -n "${MNIST_CV_IMAGE:-}" ]; then
    # Bind what the job reads and writes; --nv brings the host's NVIDIA driver into the image.
    binds="$PWD"
    for dir in "${MNIST_CV_DATA:-}" "${MNIST_CV_RESULTS:-}"; do
        [ -n "$dir" ] && mkdir -p "$dir" && binds="$binds,$(cd "$dir" && pwd)"
    done
    export MNIST_CV_IMAGE_SHA256
    MNIST_CV_IMAGE_SHA256="$(cut -d' ' -f1 "$MNIST_CV_IMAGE.sha256" 2>/dev/null ||
                             sha256sum "$MNIST_CV_IMAGE" | cut -d' ' -f1)"
    job=(apptainer exec --nv --bind "$binds" --pwd "$PWD" "$MNIST_CV_IMAGE" python -m job)
else
    job=("${MNIST_CV_PYTHON:-python3}" -m job)
fi

# The warning signal (USR1, from #SBATCH --signal=B:USR1@...) and scancel/preemption (TERM) both reach the
# batch shell; the job checkpoints at its next safe point and exits 3. Only for the warning does the job
# requeue itself: the decision is made here on the host because many images lack scontrol, and only TARGET
# (this array task, not the whole array) is requeued.
run_preemptible() {
    local target=$1 requeue=0 child='' rc
    shift
    trap 'requeue=1; [ -n "$child" ] && kill -USR1 "$child" 2>/dev/null' USR1
    trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
    "${job[@]}" "$@" &
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

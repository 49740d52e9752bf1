#!/bin/bash
# The ten (model, fold) pairs as one Slurm job array: task N runs `python -m job run --task-id N`.
#
#   sbatch slurm/array.sh                                  # all ten pairs, full protocol
#   sbatch slurm/array.sh --epochs 2 --limit 2000          # arguments go to `python -m job run`
#   sbatch --array=$(python -m job pairs --missing) slurm/array.sh    # only the pairs not done
#   sbatch -p gpu -A myproj --qos=normal -t 0:30:00 --array=0-9%4 slurm/array.sh   # site options
#
# Site specifics come from sbatch's own options or SBATCH_* variables (SBATCH_PARTITION, SBATCH_ACCOUNT,
# SBATCH_QOS, SBATCH_TIMELIMIT...), never from editing this file. The job's settings come from MNIST_CV_*
# variables: MNIST_CV_DATA, MNIST_CV_RESULTS, MNIST_CV_RUN, MNIST_CV_IMAGE (an Apptainer .sif to run in),
# MNIST_CV_PYTHON (interpreter without an image, default python3), MNIST_CV_HOME (project folder, default
# the submit directory: Slurm runs a spool copy of this script, so it cannot find the project from $0).
#
#SBATCH --job-name=mnist-cv-pairs
#SBATCH --array=0-9
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=%x_%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
set -uo pipefail

cd "${MNIST_CV_HOME:-$SLURM_SUBMIT_DIR}" || exit 1
echo "task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (job ${SLURM_JOB_ID}) on $(hostname)," \
     "restart ${SLURM_RESTART_COUNT:-0}, in $PWD"
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
    digest_file="$MNIST_CV_IMAGE.sha256"
    export MNIST_CV_IMAGE_SHA256
    MNIST_CV_IMAGE_SHA256="$(cut -d' ' -f1 "$digest_file" 2>/dev/null || sha256sum "$MNIST_CV_IMAGE" | cut -d' ' -f1)"
    cmd=(apptainer exec --nv --bind "$binds" --pwd "$PWD" "$MNIST_CV_IMAGE" python -m job)
else
    cmd=("${MNIST_CV_PYTHON:-python3}" -m job)
fi

# The warning signal (USR1, --signal above) and scancel/preemption (TERM) both reach this shell; the job
# checkpoints at its next safe point and exits 3. Only for the warning does this task requeue itself: the
# decision is made here on the host because many images lack scontrol, and only this task is requeued.
requeue=0
trap 'requeue=1; kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
"${cmd[@]}" run --task-id "$SLURM_ARRAY_TASK_ID" "$@" &
child=$!
while kill -0 "$child" 2>/dev/null; do
    wait "$child"  # returns early whenever a trap runs; keep waiting until the job has exited
done
wait "$child"
rc=$?
if [ "$requeue" = 1 ] && [ "$rc" = 3 ]; then
    echo "time limit near: requeueing ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} to resume from its checkpoint"
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$rc"

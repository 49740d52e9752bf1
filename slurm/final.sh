#!/bin/bash
# The final model: train on all 60,000 training images, score on the 10,000 test images, save it.
#
#   sbatch slurm/final.sh --model cnn                 # arguments go to `python -m job final`
#
# Same settings and site options as slurm/array.sh (MNIST_CV_DATA, MNIST_CV_RESULTS, MNIST_CV_RUN,
# MNIST_CV_IMAGE, MNIST_CV_PYTHON, MNIST_CV_HOME; SBATCH_* variables); a requeued job resumes from its checkpoint.
# These #SBATCH lines are also `mnist-cv submit --final`'s defaults (job/launch/resources.py reads them): the cnn
# pair's measured request for the 1.25x images it trains on (docs/cluster.md#what-a-task-asks-for).
#
#SBATCH --job-name=mnist-cv-final
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=1
#SBATCH --mem=3584M
#SBATCH --time=00:30:00
#SBATCH --output=%x_%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
set -uo pipefail

cd "${MNIST_CV_HOME:-$SLURM_SUBMIT_DIR}" || exit 1
. slurm/job-step.sh
run_preemptible "$SLURM_JOB_ID" final "$@"

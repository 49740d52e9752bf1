#!/bin/bash
# The ten (model, fold) pairs as one Slurm job array: task N runs `python -m job run --task-id N`. With repeated
# cross-validation, ask for ten tasks per repeat (--array=0-29 for 3): the task id says the repeat.
#
#   sbatch slurm/array.sh                                  # all ten pairs, full protocol
#   sbatch slurm/array.sh --epochs 2 --limit 2000          # arguments go to `python -m job run`
#   sbatch --array=$(python -m job pairs --missing) slurm/array.sh    # only the pairs not done
#   sbatch --array=0-29 slurm/array.sh --repeats 3         # 3 repeats: task 10r + N is pair N of repeat r
#   sbatch --array=0-1 -t 2:00:00 slurm/array.sh --pairs-per-task 5   # packed: task i trains pairs 5i..5i+4, one
#                                                          # process (one TensorFlow start-up); ask for their time
#   sbatch -p gpu -A myproj --qos=normal -t 0:30:00 --array=0-9%4 slurm/array.sh   # site options
#   sbatch --test-only slurm/array.sh                      # would it be accepted, and when would it start?
#   MNIST_CV_HOME=$(python3 -m job.launch.snapshot) sbatch slurm/array.sh   # run the code of this commit, frozen
#
# Site specifics come from sbatch's own options or SBATCH_* variables (SBATCH_PARTITION, SBATCH_ACCOUNT,
# SBATCH_QOS, SBATCH_TIMELIMIT...), never from editing this file. The job's settings come from MNIST_CV_*
# variables: MNIST_CV_DATA, MNIST_CV_RESULTS, MNIST_CV_RUN, MNIST_CV_IMAGE (an Apptainer .sif to run in),
# MNIST_CV_PYTHON (interpreter without an image, default python3), MNIST_CV_HOME (project folder, default
# the submit directory: Slurm runs a spool copy of this script, so it cannot find the project from $0); all of
# them are listed in job/settings.py. slurm/job-step.sh holds what this script and slurm/final.sh share: the task's
# command line (from job/launch/argv.py), and requeue on the warning. These #SBATCH lines are also `mnist-cv
# submit`'s defaults (job/launch/resources.py reads them). The request is what full pairs of this code used, with
# the margin docs/cluster.md#what-a-task-asks-for states (tests/test_sizing.py derives it); a GPU is asked for, and
# host memory for its CUDA runtime, neither measured on a GPU.
#
#SBATCH --job-name=mnist-cv-pairs
#SBATCH --array=0-9
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=1
#SBATCH --mem=3584M
#SBATCH --time=00:25:00
#SBATCH --output=%x_%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
set -uo pipefail

cd "${MNIST_CV_HOME:-$SLURM_SUBMIT_DIR}" || exit 1
. slurm/job-step.sh
run_preemptible "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" run --task-id "$SLURM_ARRAY_TASK_ID" "$@"

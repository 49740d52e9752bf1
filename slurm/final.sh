#!/bin/bash
# Train the final model on all training images and score it on the test images; arguments go to `job final`:
#   sbatch slurm/final.sh --model cnn [--run NAME ...]    (a requeued or repeated job resumes from its checkpoint)
#SBATCH --job-name=mnist-final
#SBATCH --gpus=1
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --output=%x_%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"
exec "${MNIST_CV_PYTHON:-python3}" -m job final "$@"  # exec: Slurm's USR1 and TERM reach Python's stop handler

#!/bin/bash
# Build the job's Apptainer image from containers/mnist-cv.def; write its sha256 next to it and print it.
#
#   containers/build.sh                            # -> ./mnist-cv.sif and ./mnist-cv.sif.sha256
#   containers/build.sh /scratch/$USER/mnist-cv.sif
#
# Works from any directory. Run it on a login node (it pulls the TensorFlow image from Docker Hub); without
# root it builds with --fakeroot, which needs an /etc/subuid entry for you on most sites. slurm/array.sh
# reads the digest from IMAGE.sha256 and every result records it; `sha256sum -c IMAGE.sha256` re-checks it.
set -euo pipefail

usage="usage: containers/build.sh [OUTPUT.sif]  (default ./mnist-cv.sif)"
case "${1:-}" in
    -h | --help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "$usage" >&2; exit 2; }
if ! command -v apptainer >/dev/null 2>&1; then
    echo "containers/build.sh: error: apptainer is not on PATH (on a cluster, try: module load apptainer)" >&2
    exit 127
fi

out="${1:-mnist-cv.sif}"
[[ $out = /* ]] || out="$PWD/$out"  # the build runs from the project root, not from here
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$(dirname "$out")"

build=(apptainer build)
[ "$(id -u)" = 0 ] || build+=(--fakeroot)
# A failed build must not leave an older image's digest looking current.
rm -f "$out.sha256"
# %files paths in the def file are relative to the directory apptainer build runs in: the project root.
(cd "$root" && "${build[@]}" "$out" "$root/containers/mnist-cv.def")

# sha256sum's own format, with the bare file name so that `sha256sum -c` works in the image's folder.
line="$(cd "$(dirname "$out")" && sha256sum "$(basename "$out")")"
echo "$line" >"$out.sha256"
echo "${line%% *}"

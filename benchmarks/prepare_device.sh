#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what benchmarks/gpu_check.sh needs on a bare CUDA machine with no network
# (Python 3.12, x86_64, torch + timm + h5py already there): wheels in .whl/ (carried with every GPU call) and
# the DALI wheel, too big for one call, split into .device/dali1 … dali4 (one folder carried per call).
# Usage, from the repository root: bash benchmarks/prepare_device.sh [python]
set -euo pipefail
PY=${1:-.venv/bin/python}
PLATFORMS=""
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do PLATFORMS+=" --platform $p"; done
download() {  # download DIR NAME==VERSION...
  local dir=$1; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$dir" "$@"
}
# zarr and its needs (pyyaml, typing-extensions, packaging, numpy are on the GPU image), the DICOM stack, and
# DALI's pure-Python needs (six, packaging, numpy are there; nvimgcodec/nvcomp serve decoders we never use)
download .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 pylibjpeg-rle==2.2.0 \
  astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0
download .device nvidia-dali-cuda130==2.4.0
wheel=$(ls .device/nvidia_dali_cuda130-2.4.0-*.whl)
rm -rf .device/dali[0-9]* && mkdir -p .device/split
split -b 55000000 -d -a 1 "$wheel" .device/split/dali.part.
for part in .device/split/dali.part.*; do
  n=$(( ${part##*.} + 1 )); mkdir -p ".device/dali$n"; mv "$part" ".device/dali$n/"
done
rmdir .device/split
echo "DALI wheel sha256: $(sha256sum "$wheel" | cut -d' ' -f1) (must match DALI_SHA256 in gpu_check.sh)"
du -sh .whl .device/dali*

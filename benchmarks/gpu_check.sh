#!/usr/bin/env bash
# The GPU suite on a bare CUDA machine with torch and timm but no network, in under 6 minutes; prints the
# tables last and writes the JSON records to $OUT (when set).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # here, on CPU, tiny sizes: checks the script itself
#
# Needs, beside the source tree: .whl/ (wheels made by benchmarks/prepare_device.sh) and the DALI wheel,
# either already joined in /var/tmp/dali.whl or as its parts .device/dali*/dali.part.N (carried one folder
# per call, each copied to /var/tmp by the earlier calls or by this script). Without DALI the suite still runs:
# the ceiling, our torch loader and the peers.
set -uo pipefail
cd "$(dirname "$0")/.."

DALI_SHA256=fbfd3204b55924bfc53354bff766bcf37165f8bca1674c59ad4ffd8096898877
DALI_PARTS=4
DALI_WHEEL_NAME=nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl
RESULTS=${OUT:-/tmp/gpu_check_out}
WORK=/tmp/gpu_check_work
mkdir -p "$RESULTS" "$WORK"

if [[ ${1:-} == --dry-run ]]; then
  PY=${PYTHON:-.venv/bin/python}
  DEVICE=cpu MODEL=test_efficientnet BATCH=8 BATCH9=2 AMP=none WORKERS=1 STUDIES=${DRY_STUDIES:-3} STEPS=2 WARMUP=1
  TRAIN_ITEMS=32 EPOCH_ITEMS=32 LOADER_ITEMS=32 LOADER_BATCH=8 REPEATS=${DRY_REPEATS:-5}
  LIMIT_DATA=600 LIMIT_TRAIN=600 LIMIT_LOADER=600
  SIZES=(--image-size 128 --size 64)  # small slices and crops: the script is checked, not the figures
  DATA_WORKERS=(--workers 1)  # a pool costs a tiny data set more than it saves (~1.5 s per command)
  WORK=${DRY_WORKDIR:-$WORK}
else
  PY=python3
  DEVICE=cuda MODEL=tf_efficientnetv2_s BATCH=128 BATCH9=16 AMP=bf16 WORKERS=6 STUDIES=30 STEPS=30 WARMUP=10
  TRAIN_ITEMS=8192 EPOCH_ITEMS=1024 LOADER_ITEMS=3072 LOADER_BATCH=128 REPEATS=5
  LIMIT_DATA=150 LIMIT_TRAIN=240 LIMIT_LOADER=180  # seconds; expected about 40, 120, 100
  SIZES=()  # the benchmarks' defaults: 512-pixel slices, 224-pixel crops
  DATA_WORKERS=()  # synth and ingest on every core
  export PYTORCH_NVML_BASED_CUDA_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  # the DALI wheel: join its parts once, check it whole
  for part in .device/dali*/dali.part.*; do [[ -f $part ]] && cp "$part" /var/tmp/; done
  if [[ ! -f /var/tmp/dali.whl ]] && (( $(ls /var/tmp/dali.part.* 2>/dev/null | wc -l) == DALI_PARTS )); then
    cat $(ls /var/tmp/dali.part.* | sort -t. -k3 -n) > /var/tmp/dali.whl
  fi
  mkdir -p /tmp/wheels && cp .whl/*.whl /tmp/wheels/
  if [[ -f /var/tmp/dali.whl ]] && echo "$DALI_SHA256  /var/tmp/dali.whl" | sha256sum -c --status; then
    ln -sf /var/tmp/dali.whl "/tmp/wheels/$DALI_WHEEL_NAME"
  else
    echo "WARNING: no complete DALI wheel in /var/tmp/dali.whl (found parts: $(ls /var/tmp/dali.part.* 2>/dev/null \
| xargs -n1 basename 2>/dev/null | tr '\n' ' ')); carry .device/dali1 … dali$DALI_PARTS first (docs/benchmarks.md). \
Running without DALI." | tee "$RESULTS/no_dali.txt"
  fi
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/wheels/*.whl || { echo "pip install of the carried wheels failed"; exit 1; }
  # `nvidia` is shared with torch's CUDA wheels: make DALI's part of it extend, never shadow, theirs
  [[ -d /tmp/site/nvidia ]] && echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" \
    > /tmp/site/nvidia/__init__.py
  export PYTHONPATH=/tmp/site:$PWD
fi

LOADERS=torch
if $PY -c "import nvidia.dali" 2>/dev/null; then LOADERS=dali,torch; fi
LOADER_CONTENDERS=$LOADERS,seed,png,monai  # monai: skipped in one line where it is not installed
[[ $DEVICE == cuda ]] && LOADER_CONTENDERS+=",${LOADERS//,/-aug,}-aug"  # augmentation on the GPU, too
echo "== $(date -u +%FT%TZ) python: $($PY --version 2>&1); loaders: $LOADERS; device: $DEVICE"
$PY - <<'EOF' || exit 1
from importlib import metadata  # versions without imports (torch and timm alone take seconds)
import lumbar_fast
for name in ("torch", "timm", "zarr", "h5py", "pydicom", "nvidia-dali-cuda130"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name} missing")
print(f"  lumbar_fast {lumbar_fast.__version__}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

failed=0
run_step() {  # run_step NAME LIMIT COMMAND...: one step, bounded in time, its whole log kept in $RESULTS
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log" | grep -v '^  repeat '
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s"
  (( status == 0 )) || failed=1
}

COMMON=(--workdir "$WORK" ${SIZES[@]+"${SIZES[@]}"})
run_step data "$LIMIT_DATA" $PY -m benchmarks data "${COMMON[@]}" --studies "$STUDIES" --slices 3,9 \
  ${DATA_WORKERS[@]+"${DATA_WORKERS[@]}"}
COMMON+=(--repeats "$REPEATS")
run_step train "$LIMIT_TRAIN" $PY -m benchmarks train "${COMMON[@]}" --device "$DEVICE" --model "$MODEL" --batch-size "$BATCH" \
  --amp "$AMP" --loaders "$LOADERS" --workers "$WORKERS" --studies "$STUDIES" --steps "$STEPS" --warmup "$WARMUP" \
  --items "$TRAIN_ITEMS" --epoch-items "$EPOCH_ITEMS" --epoch-repeats "$REPEATS" --json "$RESULTS/train.json"
# the multi-slice model (9-slice crops, 7 backbone passes per item: BATCH9 items are 7 x BATCH9 images)
run_step train-9 "$LIMIT_TRAIN" $PY -m benchmarks train "${COMMON[@]}" --device "$DEVICE" --model "$MODEL" \
  --batch-size "$BATCH9" --amp "$AMP" --loaders "$LOADERS" --workers "$WORKERS" --studies "$STUDIES" --steps "$STEPS" \
  --warmup "$WARMUP" --items "$TRAIN_ITEMS" --slices 9 --epoch-items 0 --json "$RESULTS/train-9.json"
run_step loader "$LIMIT_LOADER" $PY -m benchmarks loader "${COMMON[@]}" --device "$DEVICE" --contenders "$LOADER_CONTENDERS" \
  --workers "$WORKERS" --batch-size "$LOADER_BATCH" --studies "$STUDIES" --items "$LOADER_ITEMS" --epochs 2 \
  --json "$RESULTS/loader.json"

echo
echo "# GPU suite results ($(date -u +%FT%TZ), total $SECONDS s)"
$PY -m benchmarks.common "$RESULTS"/train.json "$RESULTS"/train-9.json "$RESULTS"/loader.json
exit $failed

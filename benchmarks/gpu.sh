#!/usr/bin/env bash
# The GPU path in one short run: `bash benchmarks/gpu.sh OUT [--dry-run]` writes JSON figures into OUT.
#
# On a machine with a GPU and a package index, it installs captionbeam into .venv-gpu the way setup.py
# chooses the TensorFlow build (nvidia-smi present -> tensorflow[and-cuda]) and runs benchmarks/gpu.py
# there: features (VGG16 / MobileNet, batch 32/128/256, float32 and mixed precision), training tokens/s
# of every architecture (one replica, MirroredStrategy, mixed precision and jit_compile on/off) and the
# CPU decode limit. Must finish within 8 minutes on one H200.
#
# Offline device machines (this workplace's GPU lease reaches no index and its image has no TensorFlow;
# TensorFlow's wheels are far over what can be carried there): the script then installs Keras from
# wheels carried in .whl/ (fetch them here first with `bash benchmarks/gpu.sh --fetch-wheels`) and runs
# the encoder section on Keras' JAX backend; the training section reports that TensorFlow is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then  # on the CPU machine: Keras and its small deps for Python 3.12
  mkdir -p .whl
  for pkg in keras namex optree; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$pkg"
  done
  ls -l .whl; exit 0
fi

OUT="${1:?usage: benchmarks/gpu.sh OUT [--dry-run] | --fetch-wheels}"; shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import tensorflow' 2>/dev/null && [ "${1:-}" = "--dry-run" ]; then
  PY=.venv/bin/python                     # the CPU dry run uses the project's own environment
elif python3 -c 'import tensorflow' 2>/dev/null; then
  PY=python3
elif python3 -m venv .venv-gpu 2>/dev/null && .venv-gpu/bin/pip install -q -e . 2>"$OUT/install.log"; then
  PY=.venv-gpu/bin/python                 # setup.py picked the CUDA build where nvidia-smi is found
else
  echo "gpu.sh: no TensorFlow and no package index here (see $OUT/install.log): Keras on JAX, encoders only" >&2
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export KERAS_BACKEND=jax
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
timeout 480 "$PY" benchmarks/gpu.py "$OUT" "$@"

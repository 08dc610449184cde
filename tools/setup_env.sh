#!/usr/bin/env bash
# Create .venv/ in the repository root and install mmimb with its pinned stack.
#
# Idempotent: a second run finds the stamp written at the end and returns in
# seconds. mmcv 2.1.0 has no PyPI wheels; it is taken from a wheel found by pip
# (its find-links, including ../shared/wheels when present, or .cache/wheels from
# an earlier build), otherwise built from the PyPI source with the C++20 patch
# that torch 2.14 headers require (about 16 minutes on 2 cores).
#
# On a GPU machine (an NVIDIA device node, and then torch's own view:
# torch.cuda.is_available()), mmcv is built with CUDA kernels instead, and a
# CPU-only wheel is never used there: mmimb/setup_plan.py decides (reuse an
# installed mmcv or a wheel in a cuda/ folder whose version label names this
# CUDA and these GPUs, e.g. 2.1.0+cu130.sm90, or build one with the system
# nvcc when it is torch's CUDA release, otherwise with NVIDIA's nvcc from PyPI).
# Without a device node nothing of this runs: the CPU path is unchanged.
#
# MMIMB_CUDA_TARGETS="9.0 8.0" also builds that CUDA wheel on a machine without a GPU (a login
# node building for GPU nodes): compute capabilities of the GPUs it is for. The wheel lands in
# .cache/wheels/cuda/ and is not installed here; copy it to a wheel folder of the GPU machines.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
# mmcv source trees are built under one scratch folder, removed on any exit (a failed build too).
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
PY="${MMIMB_PYTHON:-python3.11}"
WHEEL_CACHE="$ROOT/.cache/wheels"
STAMP="$VENV/.mmimb-setup"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
BUILD_PINS=("setuptools>=77.0.3,<82" wheel ninja)

mkdir -p "$WHEEL_CACHE"
extra_links="$WHEEL_CACHE"
if [ -d "$ROOT/../shared/wheels" ]; then
  extra_links="$extra_links $(cd "$ROOT/../shared/wheels" && pwd)"
fi
export PIP_FIND_LINKS="${PIP_FIND_LINKS:+$PIP_FIND_LINKS }$extra_links"

# An NVIDIA device node (WSL: /dev/dxg) or a GPU listed by nvidia-smi. Only a gate
# before asking torch, which is what decides; a CPU machine answers in microseconds.
nvidia_device_present() {
  compgen -G '/dev/nvidia[0-9]*' >/dev/null || [ -e /dev/dxg ] ||
    { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }
}

fingerprint=$(cat "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" "$ROOT/mmimb/setup_plan.py" |
  sha256sum | cut -d' ' -f1)
# The stamp names the path taken; a CPU set-up is redone once a GPU appears.
stamp=$(cat "$STAMP" 2>/dev/null || true)
if [ -z "${MMIMB_CUDA_TARGETS:-}" ] && { [ "$stamp" = "$fingerprint cuda" ] ||
    { [ "$stamp" = "$fingerprint cpu" ] && ! nvidia_device_present; }; }; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet)

echo "[setup] torch and torchvision (the first time this is a large download)"
"${pip[@]}" "${BUILD_PINS[@]}" "${TORCH_PINS[@]}"

MMCV_PLAN=cpu
if nvidia_device_present; then
  plan=$("$VENV/bin/python" -P "$ROOT/mmimb/setup_plan.py" plan --find-links "$PIP_FIND_LINKS")
  eval "$plan"
  echo "[setup] $MMCV_REASON"
fi

# mmcv 2.1.0's source with the patch that torch 2.14 headers need, unpacked in $1.
fetch_mmcv_source() {
  "$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: mmcv==2.1.0 -d "$1"
  tar -xzf "$1"/mmcv-2.1.0.tar.gz -C "$1"
  # torch 2.14 headers refuse anything older than C++20; mmcv 2.1.0 hard-codes C++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$1/mmcv-2.1.0/setup.py"
}

# Sets $wheel: the plan's CUDA wheel, built first unless the plan reuses one.
build_mmcv_cuda() {
  local cuda_wheels="$WHEEL_CACHE/cuda" build
  wheel="$MMCV_WHEEL"
  if [ -z "$wheel" ]; then
    if [ "$MMCV_COMPILER" = pip ]; then
      echo "[setup] NVIDIA's CUDA compiler from PyPI: ${MMCV_COMPILER_PACKAGES[*]}"
      "${pip[@]}" "${MMCV_COMPILER_PACKAGES[@]}"
    fi
    echo "[setup] building mmcv 2.1.0+$MMCV_LOCAL_TAG with CUDA kernels for $MMCV_ARCH_LIST"
    build=$(mktemp -d -p "$SCRATCH")
    fetch_mmcv_source "$build"
    # The version's local label says which CUDA kernels the wheel has (mmcv.__version__ stays
    # 2.1.0: mmcv's version.py parses it as integers).
    sed -i "s/version=get_version(),/version=get_version() + '+$MMCV_LOCAL_TAG',/" \
      "$build/mmcv-2.1.0/setup.py"
    grep -q "+$MMCV_LOCAL_TAG'" "$build/mmcv-2.1.0/setup.py"
    mkdir -p "$cuda_wheels"
    (
      if [ -n "$MMCV_CUDART" ]; then
        # torch links extensions with -lcudart; NVIDIA's package has only libcudart.so.N.
        mkdir "$build/cudart"
        ln -s "$MMCV_CUDART" "$build/cudart/libcudart.so"
        export LIBRARY_PATH="$build/cudart${LIBRARY_PATH:+:$LIBRARY_PATH}"
      fi
      cd "$build/mmcv-2.1.0"
      env "${MMCV_BUILD_ENV[@]}" MAX_JOBS="$(nproc)" \
        "$VENV/bin/python" -m pip wheel --quiet --no-build-isolation --no-deps . -w "$cuda_wheels"
    )
    rm -rf "$build"
    wheel=$(ls "$cuda_wheels"/mmcv-2.1.0+"$MMCV_LOCAL_TAG"-*.whl)
  fi
}

install_mmcv_cuda() {
  local wheel
  build_mmcv_cuda
  echo "[setup] installing $(basename "$wheel")"
  "${pip[@]}" --no-index --no-deps --force-reinstall "$wheel"
}

if [ -n "${MMIMB_CUDA_TARGETS:-}" ]; then
  targets=()
  for target in $MMIMB_CUDA_TARGETS; do targets+=(--target "$target"); done
  plan=$("$VENV/bin/python" -P "$ROOT/mmimb/setup_plan.py" plan --find-links "$PIP_FIND_LINKS" \
    "${targets[@]}")
  (
    eval "$plan"
    echo "[setup] MMIMB_CUDA_TARGETS: $MMCV_REASON"
    started=$SECONDS
    build_mmcv_cuda
    echo "[setup] CUDA wheel (not installed here): $wheel, $(du -h "$wheel" | cut -f1)," \
      "$((SECONDS - started)) s"
  )
fi

if [ "$MMCV_PLAN" = cuda ]; then
  if [ "$MMCV_KEEP_INSTALLED" != 1 ]; then
    install_mmcv_cuda
    "${pip[@]}" "mmcv==2.1.0"  # its pure-Python dependencies (a 2.1.0+cuXY counts as 2.1.0)
  fi
  "$VENV/bin/python" -P "$ROOT/mmimb/setup_plan.py" verify
elif ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  echo "[setup] mmcv 2.1.0 with compiled ops"
  if ! "${pip[@]}" --no-index --no-deps mmcv==2.1.0 2>/dev/null; then
    echo "[setup] no mmcv wheel found: building from the PyPI source (about 16 min on 2 cores)"
    build=$(mktemp -d -p "$SCRATCH")
    fetch_mmcv_source "$build"
    (cd "$build/mmcv-2.1.0" && MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
      "$VENV/bin/python" -m pip wheel --quiet --no-build-isolation --no-deps . -w "$WHEEL_CACHE")
    rm -rf "$build"
    "${pip[@]}" --no-index --no-deps mmcv==2.1.0
  fi
  "${pip[@]}" "mmcv==2.1.0"  # its pure-Python dependencies
  "$VENV/bin/python" -c "import mmcv.ops"
fi

echo "[setup] mmengine, mmdet and mmimb (editable, with dev extras)"
"${pip[@]}" -e "$ROOT[dev]"
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmimb"
echo "$fingerprint $MMCV_PLAN" > "$STAMP"
echo "[setup] done"

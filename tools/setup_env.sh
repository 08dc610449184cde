#!/usr/bin/env bash
# Create .venv/ in the repository root and install mmimb with its pinned stack.
#
# Idempotent: a second run finds the stamp written at the end and returns in
# seconds. mmcv 2.1.0 has no PyPI wheels; it is taken from a wheel found by pip
# (its find-links, including ../shared/wheels when present, or .cache/wheels from
# an earlier build), otherwise built from the PyPI source with the C++20 patch
# that torch 2.14 headers require (about 16 minutes on 2 cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
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

fingerprint=$(cat "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet)

echo "[setup] torch and torchvision (the first time this is a large download)"
"${pip[@]}" "${BUILD_PINS[@]}" "${TORCH_PINS[@]}"

if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  echo "[setup] mmcv 2.1.0 with compiled ops"
  if ! "${pip[@]}" --no-index --no-deps mmcv==2.1.0 2>/dev/null; then
    echo "[setup] no mmcv wheel found: building from the PyPI source (about 16 min on 2 cores)"
    build=$(mktemp -d)
    "$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: mmcv==2.1.0 -d "$build"
    tar -xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
    # torch 2.14 headers refuse anything older than C++20; mmcv 2.1.0 hard-codes C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$build/mmcv-2.1.0/setup.py"
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
echo "$fingerprint" > "$STAMP"
echo "[setup] done"

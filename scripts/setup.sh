#!/usr/bin/env bash
# Sets nasbnn up on a fresh Debian/Ubuntu machine: the embedded default dataset (Debian's
# dataset-fashion-mnist package) and a virtual environment in .venv with the package installed.
#   bash scripts/setup.sh         # everything the README's commands need (the package with its `train` extra)
#   bash scripts/setup.sh --dev   # + test and lint tools, ONNX and COCO extras
# A device that only runs packed models needs `pip install nasbnn[images]` alone (docs/engine.md).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[train]"
if [ "${1:-}" = "--dev" ]; then extras="[train,dev]"; fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch is pinned to 2.13.0 in pyproject.toml: the CPU build; an unpinned torch pulls a CUDA build.
.venv/bin/python -m pip install -q -e ".${extras}"

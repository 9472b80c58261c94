#!/usr/bin/env bash
# Installs everything the main run and the tests need on a fresh Debian or
# Ubuntu machine: Debian's Fashion-MNIST IDX files (dataset-fashion-mnist,
# through apt-get; as root, or with sudo) and the pinned Python packages
# (requirements.txt, through pip for python3). Safe to run again: what is
# already there is left as it is.
set -euo pipefail
cd "$(dirname "$0")"

if ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "== Fashion-MNIST: installed (/usr/share/datasets/fashion-mnist)"
else
  echo "== Fashion-MNIST: apt-get install dataset-fashion-mnist"
  sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null || { echo "error: not root and no sudo: run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 2; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
fi

echo "== Python packages: pip install -r requirements.txt"
python3 -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
  | grep -v -E "^WARNING: (Location|Running pip as)" || true
TF_CPP_MIN_LOG_LEVEL=2 python3 -c "import tensorflow as tf, keras; print('tensorflow', tf.__version__, 'keras', keras.__version__)"

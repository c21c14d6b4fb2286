#!/usr/bin/env bash
# Debian packages emodistill uses: Fashion-MNIST, the paper's out-of-domain set.
# Installed when run as root on a Debian-like system; otherwise a clear note and the
# evaluation falls back to scikit-image/scikit-learn's built-in non-face images.
set -u
packages="dataset-fashion-mnist"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root (or no apt-get): skipping Debian packages ($packages);" \
       "out-of-domain evaluation will use the built-in fallback set." >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q $packages >/dev/null 2>&1; then
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q $packages >/dev/null 2>&1 \
    || echo "note: could not install $packages; out-of-domain evaluation will use the fallback set." >&2
fi
exit 0

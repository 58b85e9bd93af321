#!/usr/bin/env bash
# Installs everything wavescore and its tests need on a fresh Debian machine.
# torch first, pinned to the CPU build that lies on this disk (a bare `torch`
# request would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[test]"
# Fashion-MNIST ships as a Debian package; install it when we can (root + apt).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped" >&2
fi

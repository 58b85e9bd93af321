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
torch_before=$("$PY" -c "import torch; print(torch.__version__)")
# The test extra includes diffusers + safetensors (diffusers:DIR references, .safetensors
# networks); neither requires torch, so this keeps the torch installed above.
"$PY" -m pip install --quiet -e ".[test]"
torch_after=$("$PY" -c "import torch; print(torch.__version__)")
if [ "$torch_before" != "$torch_after" ]; then
    echo "error: installing wavescore replaced torch $torch_before by $torch_after; reinstall torch==$torch_before" >&2
    exit 1
fi
# Debian packages the tests use: Fashion-MNIST, and Chromium to open the HTML report.
need=""
[ -d /usr/share/datasets/fashion-mnist ] || need="$need dataset-fashion-mnist"
command -v chromium >/dev/null || need="$need chromium"
if [ -n "$need" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/dev/null 2>&1 \
        || echo "warning: could not install$need; the tests that need them will be skipped" >&2
fi

#!/usr/bin/env bash
# Creates .venv with PyTorch and hebbret (editable, with dev tools), and the Fashion-MNIST files.
# Idempotent: a second run only checks. Usage: bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch's CPU/CUDA wheel first, pinned to a release every supported machine has; then hebbret.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || \
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[dev,ssl]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import hebbret, faiss, timm; print('hebbret', hebbret.__version__, 'ready in .venv')"
# Fashion-MNIST (MIT licence, Zalando) from Debian, for the examples; tests do not need it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
   echo "note: could not install dataset-fashion-mnist; the fashion-mnist examples need it"
fi
# Chromium from Debian for the browser test of `hebbret serve` (Playwright drives it; no download).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
   echo "note: could not install chromium; the browser test of hebbret serve will be skipped"
fi

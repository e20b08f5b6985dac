#!/usr/bin/env bash
# The vision job: tests that need torchvision and timm, in an environment where they import
# (torch 2.14.1 + torchvision 0.29.1 + timm, built like benchmarks/setup_env.sh). Usage:
#   VISION_PY=/path/to/venv/bin/python bash tests/vision/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${VISION_PY:-/work/vision-venv/bin/python}"
"$PY" -c "import torchvision, timm" || { echo "torchvision/timm do not import with $PY"; exit 1; }
JORYU_THREADS="${JORYU_THREADS:-1}" "$PY" -m pytest -q -s -p no:cacheprovider tests/vision "$@"

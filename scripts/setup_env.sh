#!/usr/bin/env bash
# Creates the in-repo virtual environment and installs pointpeft (editable) with pinned torch.
# Idempotent: re-running only installs what is missing. Installs Open3D's Debian libraries when root.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
fi
echo "[setup] installing pointpeft (editable) with [viz,dev]"
"${PIP[@]}" install -q -e ".[viz,dev]"
bash "$(dirname "$0")/install_system_deps.sh" || true
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, pointpeft; print("torch", torch.__version__, "| pointpeft", pointpeft.__version__)')"

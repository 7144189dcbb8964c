#!/usr/bin/env bash
# Sets up a virtual environment with gpt2_hpu, Fairseq (fairseq-fixed) and PyTorch.
#   bash scripts/setup.sh [VENV_DIR]        (default .venv)
# A torch that is already installed (a Gaudi image ships Habana's own build) is kept: the venv then sees
# the system packages and nothing installs or upgrades torch. Elsewhere torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3}

if "$python" -c "import torch" 2>/dev/null; then
  echo "setup: keeping the installed torch $("$python" -c 'import torch; print(torch.__version__)')"
  "$python" -m venv --system-site-packages "$venv"
  torch_req=()
else
  "$python" -m venv "$venv"
  torch_req=("torch==2.13.0")
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# Fairseq's build needs torch and Cython at build time: build it against this venv's torch
# (an isolated build would fetch another, multi-GB torch).
"${pip[@]}" install -q "${torch_req[@]}" "numpy<2" cython "setuptools>=77" wheel pytest
"${pip[@]}" install -q --no-build-isolation -e ".[fairseq]"
echo "setup: ready: $venv ($("$venv/bin/python" -c 'import torch, fairseq; print("torch", torch.__version__, "fairseq", fairseq.__version__)'))"

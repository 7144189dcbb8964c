#!/usr/bin/env bash
# Sets up a virtual environment with gpt2_hpu, Fairseq and PyTorch.
#   bash scripts/setup.sh [--stock] [VENV_DIR]        (default .venv; PYTHON=... picks the interpreter)
# Fairseq: fairseq-fixed 0.12.3.1 by default; with --stock, the released fairseq==0.12.2 wheel (Python 3.8
# only, its own hydra-core 1.0.7 / omegaconf 2.0.6, installed with pip 24.0, which still accepts their metadata).
# Torch: one that is already installed (a Gaudi image ships Habana's own build) is kept: the venv sees it, and
# every install runs under a constraints file pinning its exact version ($VENV/keep-torch.txt). Without
# torchaudio beside it, Fairseq is installed without torchaudio (every PyPI torchaudio up to 2.10 pins a stock
# torch; Fairseq imports it only for speech tasks). Elsewhere torch==2.13.0 (stock: torch==2.4.1) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=fixed
if [ "${1:-}" = "--stock" ]; then flavour=stock; shift; fi
venv=${1:-.venv}
python=${PYTHON:-python3}
say() { echo "setup: $*"; }
fail() { echo "setup: error: $*" >&2; exit 2; }

command -v "$python" >/dev/null 2>&1 || fail "no Python at '$python'; set PYTHON=/path/to/python3"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$flavour" = stock ]; then
  [ "$pyver" = 3.8 ] || fail "stock fairseq 0.12.2 is published only as a Python 3.8 wheel (its sdist does not \
build); this is Python $pyver: run with PYTHON=python3.8"
  fairseq_req="fairseq==0.12.2"; fairseq_dist=fairseq; default_torch="torch==2.4.1"; pip_req="pip==24.0"
else
  fairseq_req="fairseq-fixed==0.12.3.1"; fairseq_dist=fairseq-fixed; default_torch="torch==2.13.0"; pip_req="pip"
fi

# The installed torch and torchaudio, read from their metadata (importing Habana's torch is slow).
installed() {
  "$python" -c 'import sys
try:
    from importlib.metadata import version
    print(version(sys.argv[1]))
except Exception:
    pass' "$1"
}
kept_torch=$(installed torch)
kept_audio=$(installed torchaudio)

if [ -n "$kept_torch" ]; then
  say "keeping the installed torch $kept_torch${kept_audio:+ and torchaudio $kept_audio}"
  "$python" -m venv --system-site-packages "$venv"
  # A venv's --system-site-packages sees the base interpreter, not $python's own venv: name its folders too.
  "$python" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    print("\n".join(site.getsitepackages()))' > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/keep-torch.pth"
  torch_req=()
else
  "$python" -m venv "$venv"
  torch_req=("$default_torch")
fi
vpy="$venv/bin/python"
pip=("$vpy" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "$pip_req"
# Fairseq's build needs torch and Cython at build time: build it against this venv's torch (an isolated build
# would fetch another, multi-GB torch).
"${pip[@]}" install -q "${torch_req[@]}" "numpy<2" cython "setuptools>=64" wheel pytest

# From here on every install keeps this torch, whatever its version string (Habana's are like 2.5.1a0+git...).
keep="$venv/keep-torch.txt"
"$vpy" -c 'from importlib.metadata import version
for name in ("torch", "torchaudio"):
    try:
        print(name + "==" + version(name))
    except Exception:
        pass' > "$keep"
pip_keep=("${pip[@]}" install -q -c "$keep")

if [ -n "$kept_torch" ] && [ -z "$kept_audio" ]; then
  say "no torchaudio beside this torch: installing $fairseq_req without it (only Fairseq's speech tasks use it)"
  "${pip_keep[@]}" --no-build-isolation --no-deps "$fairseq_req"
  "$vpy" -c 'import re, sys
from importlib.metadata import requires
for req in requires(sys.argv[1]) or []:
    name = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if "extra ==" not in req and name not in ("torch", "torchaudio"):
        print(req)' "$fairseq_dist" > "$venv/fairseq-requirements.txt"
  "${pip_keep[@]}" -r "$venv/fairseq-requirements.txt"
  "${pip_keep[@]}" --no-build-isolation -e ".[test]"
elif [ "$flavour" = stock ]; then
  "${pip_keep[@]}" "$fairseq_req"
  "${pip_keep[@]}" --no-build-isolation -e ".[test]"
else
  "${pip_keep[@]}" --no-build-isolation -e ".[fairseq,test]"
fi
say "ready: $venv ($("$vpy" -c 'from importlib.metadata import version
import sys
print("Python %d.%d" % sys.version_info[:2], *("%s %s" % (n, version(n)) for n in sys.argv[1:]))' torch "$fairseq_dist" hydra-core omegaconf))"

"""Installing gpt2_hpu never replaces the torch already there (on Gaudi it is Habana's own build).

Habana's torch versions are pre-releases with a local label (2.5.1a0+git...), which no PyPI requirement such as
`torch==2.5.1` matches. The stand-in here is a wheel named torch with such a version, installed into a fresh
venv without torchaudio, as on a Gaudi image that ships none. A local wheelhouse adds the hazard: a torchaudio
newer than PyPI's that pins a stock torch, as every PyPI torchaudio up to 2.10 does. The installs are real
(Fairseq's wheel comes from pip's cache, filled when the test environment was set up).
"""
import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile

try:
    import tomllib
except ImportError:  # Python < 3.11: tomli is the same parser (the test extra installs it there)
    import tomli as tomllib

from helpers import REPO

HABANA_TORCH = "2.5.1a0+git6fd6dd3"
# The hazard: a torchaudio newer than PyPI's (2.11.0) pinning a torch that no index has (a local label, under
# any cap a pip configuration may put on torch).
HAZARD_AUDIO, STOCK_TORCH = "2.11.0.post99", "2.5.1+stock"


def _wheel(folder, name, version, requires=()):
    """A minimal pure-Python wheel."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist}/METADATA": meta,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = f"{dist}/RECORD"
    lines = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(text.encode())}")
    files[record] = "\n".join(lines + [f"{record},,"]) + "\n"
    os.makedirs(folder, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, text in files.items():
            z.writestr(name_in_zip, text)
    return path


def _flavour():
    """Which Fairseq this environment tests: fairseq-fixed, or the stock 0.12.2 release."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("fairseq-fixed")
        return "fixed"
    except PackageNotFoundError:
        return "stock"


def _habana_like_python(tmp_path):
    """A fresh venv holding only the Habana-style torch (no torchaudio); returns its python."""
    venv = tmp_path / "gaudi"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index",
                    str(_wheel(tmp_path / "habana", "torch", HABANA_TORCH))], check=True)
    return python


def _hazard_env(tmp_path):
    """pip sees, besides its usual sources, a torchaudio that would pull a stock torch."""
    wheels = tmp_path / "hazard"
    _wheel(wheels, "torch", STOCK_TORCH)
    _wheel(wheels, "torchaudio", HAZARD_AUDIO, requires=[f"torch=={STOCK_TORCH}"])
    env = dict(os.environ)
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [env.get("PIP_FIND_LINKS"), str(wheels)]))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def _installed(python, name):
    proc = subprocess.run([str(python), "-c", "import sys\nfrom importlib.metadata import version\n"
                           "try:\n    print(version(sys.argv[1]))\nexcept Exception:\n    print('-')", name],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_dependencies_never_name_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = [r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip() for r in required]
    assert "numpy" in names and "torch" not in names and "torchaudio" not in names


def test_install_keeps_an_existing_torch(tmp_path):
    python = _habana_like_python(tmp_path)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)], capture_output=True, text=True,
                          env=_hazard_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed(python, "torch") == HABANA_TORCH
    version = subprocess.run([str(python), "-c", "import torch, gpt2_hpu; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == HABANA_TORCH


KEEP_TORCH = "import importlib.metadata as m; print('torch==' + m.version('torch'))"  # the README's one-liner


def test_documented_pip_command_keeps_a_habana_torch(tmp_path):
    """README: pin the installed torch in a constraints file, then install the package with its Fairseq."""
    python = _habana_like_python(tmp_path)
    env = _hazard_env(tmp_path)
    keep = tmp_path / "keep-torch.txt"
    keep.write_text(subprocess.run([str(python), "-c", KEEP_TORCH], capture_output=True, text=True,
                                   check=True).stdout)
    assert keep.read_text().strip() == f"torch=={HABANA_TORCH}"
    pip = [str(python), "-m", "pip", "install"]
    if _flavour() == "fixed":
        target = [f"{REPO}[fairseq]"]
    else:
        target = ["fairseq==0.12.2", str(REPO)]
    # Without the pin pip would replace Habana's torch: with the hazard torchaudio's stock torch, or, where an
    # index offers a newer torchaudio, with the newest torch there.
    unpinned = subprocess.run([*pip, "--dry-run", *target], capture_output=True, text=True, env=env)
    replacing = re.findall(r"\btorch-(\S+)", unpinned.stdout.split("Would install", 1)[-1])
    assert unpinned.returncode == 0 and replacing and replacing[0] != HABANA_TORCH, unpinned.stdout[-3000:]
    pinned = subprocess.run([*pip, "-q", "-c", str(keep), *target], capture_output=True, text=True, env=env)
    assert _installed(python, "torch") == HABANA_TORCH
    if _flavour() == "fixed":
        # torchaudio 2.11 and later declare no torch requirement: the install goes through, torch untouched.
        assert pinned.returncode == 0, pinned.stdout[-3000:] + pinned.stderr[-3000:]
        assert _installed(python, "fairseq-fixed") == "0.12.3.1" and _installed(python, "gpt2-hpu") == "0.1.0"
        assert _installed(python, "torchaudio") != HAZARD_AUDIO
    else:
        # Python 3.8: every torchaudio there pins a stock torch, so pip refuses rather than replace it;
        # scripts/setup.sh (below) installs stock Fairseq without torchaudio instead.
        assert pinned.returncode != 0 and "torchaudio" in pinned.stdout + pinned.stderr
        assert _installed(python, "fairseq") == "-"


def test_setup_script_keeps_a_habana_torch_without_torchaudio(tmp_path):
    python = _habana_like_python(tmp_path)
    venv = tmp_path / "venv"
    args = ["--stock"] if _flavour() == "stock" else []
    env = _hazard_env(tmp_path)
    env["PYTHON"] = str(python)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), *args, str(venv)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"keeping the installed torch {HABANA_TORCH}" in proc.stdout
    assert "no torchaudio beside this torch" in proc.stdout
    vpy = venv / "bin" / "python"
    assert _installed(vpy, "torch") == HABANA_TORCH
    assert _installed(vpy, "torchaudio") == "-"
    assert (venv / "keep-torch.txt").read_text().strip() == f"torch=={HABANA_TORCH}"
    fairseq = "fairseq-fixed" if _flavour() == "fixed" else "fairseq"
    assert _installed(vpy, fairseq) == ("0.12.3.1" if fairseq == "fairseq-fixed" else "0.12.2")
    assert _installed(vpy, "hydra-core") == ("1.3.2" if fairseq == "fairseq-fixed" else "1.0.7")
    assert subprocess.run([str(vpy), "-c", "import gpt2_hpu, hydra, omegaconf, sacrebleu"]).returncode == 0


def test_setup_script_stock_refuses_other_pythons(tmp_path):
    """--stock on any Python but 3.8 is one line (a stand-in interpreter answers as Python 3.12)."""
    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--stock", str(tmp_path / "v")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and not (tmp_path / "v").exists()
    assert proc.stderr.strip().splitlines() == [
        "setup: error: stock fairseq 0.12.2 is published only as a Python 3.8 wheel (its sdist does not build); "
        "this is Python 3.12: run with PYTHON=python3.8"]

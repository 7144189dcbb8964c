"""Installing gpt2_hpu never replaces the torch already there (on Gaudi it is Habana's own build)."""
import base64
import hashlib
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO

FAKE_VERSION = "2.4.0+habana.1.18"


def _fake_torch_wheel(folder):
    """A stand-in for Habana's torch build: a wheel named torch with a version PyPI never had."""
    files = {
        "torch/__init__.py": f'__version__ = "{FAKE_VERSION}"\n',
        f"torch-{FAKE_VERSION}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {FAKE_VERSION}\n",
        f"torch-{FAKE_VERSION}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = f"torch-{FAKE_VERSION}.dist-info/RECORD"
    lines = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(text.encode())}")
    files[record] = "\n".join(lines + [f"{record},,"]) + "\n"
    path = folder / f"torch-{FAKE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_dependencies_never_name_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert not [r for r in required if r.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip() == "torch"]


def test_install_keeps_an_existing_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = _fake_torch_wheel(tmp_path)
    subprocess.run([*pip, "install", "--no-index", wheel], check=True)
    proc = subprocess.run([*pip, "install", REPO], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    show = subprocess.run([*pip[:-1], "show", "torch"], capture_output=True, text=True, check=True).stdout
    assert f"Version: {FAKE_VERSION}" in show
    version = subprocess.run([venv / "bin" / "python", "-c", "import torch, gpt2_hpu; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == FAKE_VERSION

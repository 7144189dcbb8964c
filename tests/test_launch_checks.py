"""Launch settings a Gaudi job would trip over later are refused up front, in one line (end to end; the
in-process cases are in tests/unit/test_launch_plan.py)."""
import sys

from omegaconf import OmegaConf

from helpers import BIN, MPI_ACROSS_HOSTS, PACKAGE_DIR, TINY_MODEL, emulation_env, launch_cfg, run

BRIDGE_FIRST = """
from omegaconf import OmegaConf
from gpt2_hpu import emulation
from gpt2_hpu.distributed import _find_launch
from gpt2_hpu.errors import UsageError
emulation.install()
from habana_frameworks.torch.distributed.hccl import initialize_distributed_hpu  # runs it, as the bridge does
import os
assert os.environ["MASTER_ADDR"] == "localhost" and os.environ["WORLD_SIZE"] == "16", dict(os.environ)
try:
    _find_launch(OmegaConf.create(CFG))
    raise SystemExit("no error")
except UsageError as e:
    print(e)
"""


def test_the_check_holds_after_habanas_bridge_copied_the_mpi_variables():
    """From 1.18 the bridge can load at `import torch` and run initialize_distributed_hpu() before the plugin:
    it copies OMPI_COMM_WORLD_* into WORLD_SIZE/RANK and sets MASTER_ADDR=localhost."""
    env = emulation_env(8, "eager", **{k: v for k, v in MPI_ACROSS_HOSTS.items() if k != "MASTER_PORT"})
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    code = f"CFG = {OmegaConf.to_container(launch_cfg())!r}\n" + BRIDGE_FIRST
    proc = run([sys.executable, "-c", code], env=env)
    assert proc.returncode == 0, proc.output[-2000:]
    assert "needs MASTER_ADDR set to rank 0's host name, not localhost" in proc.stdout, proc.output[-2000:]


def test_bf16_on_the_command_line_is_autocast_not_tpu(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", "--bf16", *TINY_MODEL,
                "--max-update", "3", "--save-dir", tmp_path], env=emulation_env(1, "eager"))
    assert proc.returncode == 0, proc.output[-3000:]
    assert "bf16 autocast on hpu: fp32 weights and loss" in proc.output
    assert "Traceback" not in proc.output

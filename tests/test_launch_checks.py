"""Launch settings a Gaudi job would trip over later are refused up front, in one line (in-process, fast)."""
import os
import sys

import pytest
from omegaconf import OmegaConf

from conftest import PACKAGE_DIR, TINY_MODEL, emulation_env, run, BIN


def _cfg(**common):
    return OmegaConf.create({
        "common": dict({"hpu": True, "hpu_mode": "auto", "bf16": False, "memory_efficient_bf16": False,
                        "amp": False}, **common),
        "distributed_training": {"distributed_init_method": None, "distributed_world_size": 1,
                                 "distributed_rank": 0, "device_id": 0, "distributed_no_spawn": False,
                                 "distributed_backend": "nccl"},
    })


MPI_ACROSS_HOSTS = {"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                    "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MASTER_PORT": "12345"}


@pytest.fixture
def launch_env(monkeypatch):
    """The launch code writes os.environ itself (WORLD_SIZE, RANK, ...): put the whole of it back afterwards."""
    saved = dict(os.environ)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE",
                 "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        os.environ.pop(name, None)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "127.0.1.1", "::1"])
def test_mpirun_across_hosts_refuses_a_local_master_address(launch_env, address):
    from gpt2_hpu import adaptations
    from gpt2_hpu.distributed import _find_launch
    from gpt2_hpu.errors import UsageError

    adaptations.apply()
    for name, value in dict(MPI_ACROSS_HOSTS, MASTER_ADDR=address).items():
        launch_env.setenv(name, value)
    with pytest.raises(UsageError) as e:
        _find_launch(_cfg())
    assert str(e.value).startswith("mpirun across hosts (16 ranks, 8 on this host) needs MASTER_ADDR set to rank "
                                   f"0's host name, not {address}")


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
    code = f"CFG = {OmegaConf.to_container(_cfg())!r}\n" + BRIDGE_FIRST
    proc = run([sys.executable, "-c", code], env=env)
    assert proc.returncode == 0, proc.output[-2000:]
    assert "needs MASTER_ADDR set to rank 0's host name, not localhost" in proc.stdout, proc.output[-2000:]


def test_mpirun_across_hosts_with_a_real_master_address_plans_an_env_launch(launch_env):
    from gpt2_hpu.distributed import _find_launch

    for name, value in dict(MPI_ACROSS_HOSTS, MASTER_ADDR="host0").items():
        launch_env.setenv(name, value)
    cfg = _cfg()
    assert _find_launch(cfg) == "env"
    assert (cfg.distributed_training.distributed_world_size, cfg.distributed_training.distributed_rank,
            cfg.distributed_training.device_id) == (16, 9, 1)


def test_mpirun_on_one_host_may_use_localhost(launch_env):
    from gpt2_hpu.distributed import _find_launch

    for name, value in dict(MPI_ACROSS_HOSTS, OMPI_COMM_WORLD_SIZE="8", MASTER_ADDR="localhost").items():
        launch_env.setenv(name, value)
    assert _find_launch(_cfg()) == "env"


@pytest.mark.parametrize("field,flag", [("bf16", "--bf16"), ("memory_efficient_bf16", "--memory-efficient-bf16"),
                                        ("amp", "--amp")])
def test_foreign_precision_flags_with_hpu_get_one_line(field, flag):
    from gpt2_hpu.checks import hpu_precision

    message = hpu_precision(_cfg(**{field: True}))
    assert message.startswith(f"--hpu with {flag} is not supported yet") and f"drop {flag}" in message
    assert hpu_precision(_cfg(hpu=False, **{field: True})) is None
    assert hpu_precision(_cfg()) is None


def test_hpu_with_bf16_on_the_command_line_exits_with_that_line(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", "--bf16", *TINY_MODEL,
                "--max-update", "3", "--save-dir", tmp_path], env=emulation_env(1, "lazy"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["gpt2-hpu: error: --hpu with --bf16 is not supported yet: Fairseq sends --bf16 to its TPU "
                      "code, not to the HPU; drop --bf16 to train in fp32 on the HPU"], proc.stderr[-2000:]
    assert "Traceback" not in proc.output

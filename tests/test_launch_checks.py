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


@pytest.mark.parametrize("fields", [dict(bf16=True, fp16=True), dict(memory_efficient_bf16=True, amp=True)])
def test_two_precisions_get_one_line(fields):
    from gpt2_hpu.checks import precision

    assert precision(_cfg(hpu=False, **fields)).startswith("--bf16 with --fp16 or --amp: choose one precision")
    assert precision(_cfg(hpu=False, bf16=True)) is None
    assert precision(_cfg(bf16=True)) is None


def test_amp_with_hpu_gets_one_line():
    from gpt2_hpu.checks import precision

    assert precision(_cfg(amp=True)).startswith("--hpu with --amp is not supported")
    assert precision(_cfg(hpu=False, amp=True)) is None


def test_bf16_on_the_command_line_is_autocast_not_tpu(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", "--bf16", *TINY_MODEL,
                "--max-update", "2", "--save-dir", tmp_path], env=emulation_env(1, "eager"))
    assert proc.returncode == 0, proc.output[-3000:]
    assert "bf16 autocast on hpu: fp32 weights and loss" in proc.output
    assert "Traceback" not in proc.output

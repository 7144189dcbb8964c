"""Launch planning over an environment matrix, in-process: which launch a config and the environment make,
what it fills into the config, and the one-line refusals."""
import os

import pytest

from gpt2_hpu import distributed
from gpt2_hpu.checks import precision, undo_implied_tpu
from gpt2_hpu.distributed import _find_launch, _plan_launch
from gpt2_hpu.errors import UsageError

from helpers import MPI_ACROSS_HOSTS, launch_cfg

_cfg = launch_cfg


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
    for name, value in dict(MPI_ACROSS_HOSTS, MASTER_ADDR=address).items():
        launch_env.setenv(name, value)
    with pytest.raises(UsageError) as e:
        _find_launch(_cfg())
    assert str(e.value).startswith("mpirun across hosts (16 ranks, 8 on this host) needs MASTER_ADDR set to rank "
                                   f"0's host name, not {address}")


def test_mpirun_across_hosts_with_a_real_master_address_plans_an_env_launch(launch_env):
    for name, value in dict(MPI_ACROSS_HOSTS, MASTER_ADDR="host0").items():
        launch_env.setenv(name, value)
    cfg = _cfg()
    assert _find_launch(cfg) == "env"
    assert (cfg.distributed_training.distributed_world_size, cfg.distributed_training.distributed_rank,
            cfg.distributed_training.device_id) == (16, 9, 1)


def test_mpirun_on_one_host_may_use_localhost(launch_env):
    for name, value in dict(MPI_ACROSS_HOSTS, OMPI_COMM_WORLD_SIZE="8", MASTER_ADDR="localhost").items():
        launch_env.setenv(name, value)
    assert _find_launch(_cfg()) == "env"


@pytest.mark.parametrize("fields", [dict(bf16=True, fp16=True), dict(memory_efficient_bf16=True, amp=True)])
def test_two_precisions_get_one_line(fields):
    assert precision(_cfg(hpu=False, **fields)).startswith("--bf16 with --fp16 or --amp: choose one precision")
    assert precision(_cfg(hpu=False, bf16=True)) is None
    assert precision(_cfg(bf16=True)) is None


def test_amp_with_hpu_gets_one_line():
    assert precision(_cfg(amp=True)).startswith("--hpu with --amp is not supported")
    assert precision(_cfg(hpu=False, amp=True)) is None


@pytest.mark.parametrize("argv,tpu", [(["fairseq-train", "--bf16"], False),
                                      (["fairseq-train", "--bf16", "--tpu"], True)])
def test_bf16_leaves_tpu_only_when_asked_for(argv, tpu):
    cfg = _cfg(bf16=True, tpu=True)
    undo_implied_tpu(cfg, argv)
    assert cfg.common.tpu is tpu




class _Cards:
    """Stands in for the HPU device: planning asks it only for the number of cards."""

    def __init__(self, count):
        self.count = count

    def device_count(self):
        return self.count


TORCHRUN = {"MASTER_ADDR": "host0", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}


@pytest.mark.parametrize("env,hpu,world,no_spawn,plan,backend,init,placement", [
    ({}, True, 1, False, "single", "nccl", None, (1, 0, 0)),
    ({}, True, 2, False, "spawn", "hccl", "tcp://localhost:", (2, 0, 0)),
    ({}, False, 2, False, "spawn", "gloo", "tcp://localhost:", (2, 0, 0)),
    ({}, True, 2, True, "env", "hccl", "tcp://localhost:", (2, 0, 0)),
    (TORCHRUN, True, 1, False, "env", "hccl", "env://", (4, 3, 1)),
    (TORCHRUN, False, 1, False, "env", "gloo", "env://", (4, 3, 1)),
    (dict(TORCHRUN, WORLD_SIZE="1", RANK="0"), True, 1, False, "single", "nccl", None, (1, 0, 0)),
    (dict(MPI_ACROSS_HOSTS, MASTER_ADDR="host0"), True, 1, False, "env", "hccl", "env://", (16, 9, 1)),
])
def test_launch_plan_matrix(launch_env, env, hpu, world, no_spawn, plan, backend, init, placement):
    launch_env.setattr(distributed, "_activate", lambda cfg: _Cards(2))
    for name, value in env.items():
        launch_env.setenv(name, value)
    cfg = _cfg(hpu=hpu)
    dt = cfg.distributed_training
    dt.distributed_world_size, dt.distributed_no_spawn = world, no_spawn
    assert _plan_launch(cfg) == plan
    assert dt.distributed_backend == backend
    assert (dt.distributed_init_method or "").startswith(init or "") and (init is None) == (
        dt.distributed_init_method is None)
    assert (dt.distributed_world_size, dt.distributed_rank, dt.device_id) == placement


@pytest.mark.parametrize("env,world,message", [
    ({}, 4, "--distributed-world-size 4 asks for 4 HPUs but this host has 2: lower it, or launch across hosts"),
    ({k: v for k, v in MPI_ACROSS_HOSTS.items() if k != "MASTER_PORT"}, 1,
     "mpirun launch needs MASTER_ADDR and MASTER_PORT"),
])
def test_launches_that_cannot_work_are_refused(launch_env, env, world, message):
    launch_env.setattr(distributed, "_activate", lambda cfg: _Cards(2))
    for name, value in env.items():
        launch_env.setenv(name, value)
    cfg = _cfg()
    cfg.distributed_training.distributed_world_size = world
    with pytest.raises(UsageError, match="^" + message):
        _plan_launch(cfg)

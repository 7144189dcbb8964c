"""Distributed start-up on HPU (hccl) and CPU (gloo), where Fairseq's own only knows CUDA.

Launches, in order of precedence:
- torchrun / torch.distributed.run: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK (LOCAL_RANK) in the env;
- mpirun (Open MPI): OMPI_COMM_WORLD_{SIZE,RANK,LOCAL_RANK}, with MASTER_ADDR/MASTER_PORT given by the user;
- one host, `--distributed-world-size N`: N processes spawned here, one per HPU, on a free local port.
CUDA runs (and TPU) go through Fairseq unchanged.
"""
import functools
import ipaddress
import logging
import os
import socket
import sys

import torch

from gpt2_hpu import checks, launcher, preemption
from gpt2_hpu import device as hpu_device
from gpt2_hpu.config import hpu_mode_arg
from gpt2_hpu.errors import UsageError

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")


def uses_fairseq_launch(cfg):
    """CUDA and TPU runs keep Fairseq's own launcher."""
    common = cfg.common
    if getattr(common, "hpu", False):
        return False
    return bool(common.tpu) or (torch.cuda.is_available() and not common.cpu)


def call_main(cfg, main, fairseq_call_main, setup_rank, **kwargs):
    """`setup_rank()` runs first in every spawned rank: a fresh interpreter has none of the run-time adaptations."""
    main = functools.partial(_train_then_close_writers, main)
    if uses_fairseq_launch(cfg):
        try:
            _check_fairseq_launch(cfg)
        except UsageError as e:
            e.exit()
        return fairseq_call_main(cfg, main, **kwargs)
    try:
        plan = _plan_launch(cfg)
        _refuse(checks.zero_sharding(cfg))
        if plan == "single" and cfg.common.hpu:
            _activate(cfg)
    except UsageError as e:
        e.exit()
    if plan == "spawn":
        _spawn(cfg, main, setup_rank, kwargs)
        return
    preemption.install()  # this process trains
    if plan == "env":
        _run_rank(cfg.distributed_training.device_id, main, cfg, kwargs)
    else:
        main(cfg, **kwargs)


def _train_then_close_writers(main, cfg, **kwargs):
    """Fairseq closes its TensorBoard writers in an atexit handler. A spawned rank runs multiprocessing's exit
    function first, as soon as its function returns, and that closes the queue each tensorboardX writer thread
    reads from: the threads die in tracebacks ("handle is closed"), and their last events are lost."""
    try:
        return main(cfg, **kwargs)
    finally:
        progress_bar = sys.modules.get("fairseq.logging.progress_bar")
        writers = getattr(progress_bar, "_tensorboard_writers", {})
        for writer in writers.values():
            writer.close()
        writers.clear()


def _refuse(message):
    if message:
        raise UsageError(message)


def _check_fairseq_launch(cfg):
    """Fairseq's own launcher (CUDA, TPU) finds its world size in call_main; under torchrun or Slurm it may take
    the launcher's (Fairseq 0.12.2 always does), so only a launch of this host alone is checked here."""
    dt = cfg.distributed_training
    if any(k in os.environ for k in ("WORLD_SIZE", "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST")):
        return
    _refuse(checks.zero_sharding(cfg))
    world_size = dt.distributed_world_size or 1
    if cfg.common.tpu or world_size <= 1 or dt.distributed_init_method is not None or dt.distributed_port > 0:
        return
    # Fairseq's one-host launch asserts this, with a traceback.
    available = torch.cuda.device_count()
    if world_size > available:
        raise UsageError(f"--distributed-world-size {world_size} asks for {world_size} GPUs but this host has "
                         f"{available}: lower it, or launch across hosts with torchrun or Slurm")


def _activate(cfg):
    return hpu_device.activate(hpu_mode_arg(cfg.common))


def _plan_launch(cfg):
    """Fills cfg.distributed_training for the launch found; returns "env", "spawn" or "single"."""
    plan = _find_launch(cfg)
    dt = cfg.distributed_training
    if plan != "single" and dt.distributed_backend in (None, "nccl"):
        dt.distributed_backend = hpu_device.HpuDevice.distributed_backend if cfg.common.hpu else "gloo"
    return plan


def _find_launch(cfg):
    dt = cfg.distributed_training
    # Under mpirun, Habana's bridge may already have copied these variables when it loaded: check either way.
    if dt.distributed_init_method is None and all(k in os.environ for k in _MPI_VARS):
        if not all(k in os.environ for k in ("WORLD_SIZE", "RANK")):
            os.environ["WORLD_SIZE"] = os.environ["OMPI_COMM_WORLD_SIZE"]
            os.environ["RANK"] = os.environ["OMPI_COMM_WORLD_RANK"]
            os.environ["LOCAL_RANK"] = os.environ["OMPI_COMM_WORLD_LOCAL_RANK"]
        if not all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT")):
            raise UsageError("mpirun launch needs MASTER_ADDR and MASTER_PORT (the address and a free port of "
                             "rank 0's host): export them, e.g. with mpirun -x MASTER_ADDR=host0 -x MASTER_PORT=29500")
        _check_master_reachable_across_hosts()

    if dt.distributed_init_method is None and all(k in os.environ for k in _TORCHRUN_VARS):
        world_size = int(os.environ["WORLD_SIZE"])
        if world_size > 1:
            dt.distributed_init_method = "env://"
            dt.distributed_world_size = world_size
            dt.distributed_rank = int(os.environ["RANK"])
            dt.device_id = int(os.environ.get("LOCAL_RANK", 0))
            dt.distributed_no_spawn = True
            return "env"

    world_size = dt.distributed_world_size or 1
    if world_size <= 1:
        return "single"

    if cfg.common.hpu:
        available = _activate(cfg).device_count()
        if world_size > available:
            raise UsageError(f"--distributed-world-size {world_size} asks for {world_size} HPUs but this host has "
                             f"{available}: lower it, or launch across hosts with torchrun or mpirun")
    if dt.distributed_init_method is None:
        dt.distributed_init_method = f"tcp://localhost:{free_port()}"
    return "spawn" if not dt.distributed_no_spawn else "env"


def _check_master_reachable_across_hosts():
    """Habana's bridge sets MASTER_ADDR=localhost when it loads (at `import torch` from 1.18 in eager mode), so
    its presence proves nothing: across hosts, each host would rendezvous with itself."""
    world = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if local is None or world <= int(local):
        return
    if _is_loopback(os.environ["MASTER_ADDR"]):
        raise UsageError(f"mpirun across hosts ({world} ranks, {local} on this host) needs MASTER_ADDR set to "
                         f"rank 0's host name, not {os.environ['MASTER_ADDR']}: export it, e.g. "
                         "mpirun -x MASTER_ADDR=host0 -x MASTER_PORT=29500")


def _is_loopback(address):
    address = address.strip().strip("[]")
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def free_port():
    """A port the kernel just handed out: far less likely to collide than a random guess."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _spawn(cfg, main, setup_rank, kwargs):
    dt = cfg.distributed_training
    kwargs = dict(kwargs, start_rank=dt.distributed_rank or 0)
    dt.distributed_rank = None  # each child takes start_rank + its index
    # When any rank fails, the others are ended too and the error is reported here (no hang).
    launcher.spawn(_run_spawned_rank, (main, cfg, setup_rank, kwargs), dt.distributed_world_size)


def _run_spawned_rank(index, main, cfg, setup_rank, kwargs):
    """Entry point of each spawned process (a gpt2_hpu function, so unpickling it loads the plugin first)."""
    setup_rank()
    dt = cfg.distributed_training
    os.environ["WORLD_SIZE"] = str(dt.distributed_world_size)
    os.environ["RANK"] = str(kwargs.get("start_rank", 0) + index)
    os.environ["LOCAL_RANK"] = str(index)
    _run_rank(index, main, cfg, kwargs)


def _run_rank(local_rank, main, cfg, kwargs):
    from fairseq.distributed import utils as distributed_utils

    if cfg.common.hpu:
        # The launcher environment must be in place before Habana's hccl module is imported.
        device = _activate(cfg)
        device.initialize_distributed(int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), local_rank)
    distributed_utils.distributed_main(local_rank, main, cfg, kwargs)

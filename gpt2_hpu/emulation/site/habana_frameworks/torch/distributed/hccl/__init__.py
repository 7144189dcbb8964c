"""Emulated `habana_frameworks.torch.distributed.hccl`: an "hccl" process-group backend carried by gloo.

As in the bridge, importing this module calls `initialize_distributed_hpu()` (which fills the launcher
environment) and registers the backend, so `init_process_group("hccl")` works afterwards.
"""
import datetime
import os

import torch.distributed as dist

__all__ = ["initialize_distributed_hpu"]


def _setup_environment_from_mpi():
    if all(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK")):
        pass
    elif all(k in os.environ for k in ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        os.environ["LOCAL_RANK"] = os.environ["OMPI_COMM_WORLD_LOCAL_RANK"]
        os.environ["WORLD_SIZE"] = os.environ["OMPI_COMM_WORLD_SIZE"]
        os.environ["RANK"] = os.environ["OMPI_COMM_WORLD_RANK"]
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", "12345")


def _setup_module_id(world_size, local_rank):
    if "HLS_MODULE_ID" in os.environ or local_rank == -1 or world_size == 1:
        return
    visible = os.environ.get("HABANA_VISIBLE_MODULES")
    if visible:
        modules = visible.split(",")
        assert local_rank < len(modules), "HABANA_VISIBLE_MODULES lists fewer modules than local ranks"
        os.environ["HLS_MODULE_ID"] = modules[local_rank]
    else:
        os.environ["HLS_MODULE_ID"] = str(local_rank)


def initialize_distributed_hpu(world_size=None, rank=None, local_rank=None):
    if world_size is not None and rank is not None and local_rank is not None:
        os.environ["WORLD_SIZE"] = str(world_size)
        os.environ["RANK"] = str(rank)
        os.environ["LOCAL_RANK"] = str(local_rank)
    else:
        _setup_environment_from_mpi()
    world_size = int(os.environ.get("WORLD_SIZE") or 1)
    rank = int(os.environ.get("RANK") or -1)
    local_rank = int(os.environ.get("LOCAL_RANK") or -1)
    _setup_module_id(world_size, local_rank)
    if rank != -1:
        os.environ["ID"] = str(rank)
    return world_size, rank, local_rank


def _create_process_group_hccl(store, rank, world_size, timeout):
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


if "hccl" not in dist.Backend.backend_list:
    dist.Backend.register_backend("hccl", _create_process_group_hccl, devices=["cpu"])

initialize_distributed_hpu()

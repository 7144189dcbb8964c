"""Emulated `habana_frameworks.torch.distributed.hccl`: an "hccl" process-group backend carried by gloo.

As in the bridge, importing this module calls `initialize_distributed_hpu()` (which fills the launcher
environment) and registers the backend, so `init_process_group("hccl")` works afterwards. Like hccl, the
emulated backend moves HPU memory only: a collective given a host tensor is refused; object collectives
(`all_gather_object`, ...) stage their bytes on the HPU, as the bridge arranges.
"""
import datetime
import os

import torch
import torch.distributed as dist
from torch._C import _distributed_c10d as c10d
from torch.distributed import distributed_c10d

from gpt2_hpu.emulation import DEVICE
from gpt2_hpu.emulation.device import HpuTensor

__all__ = ["initialize_distributed_hpu"]


def _setup_environment_from_mpi():
    if all(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK")):
        return  # as in the bridge: a launcher already set everything, so no MASTER_* defaults either
    if all(k in os.environ for k in ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
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


def _host_view(collective, tensors):
    """The host tensors behind HPU tensors, for gloo to move; a host tensor is refused as hccl refuses it."""
    if isinstance(tensors, torch.Tensor):
        return _host_view(collective, [tensors])[0]
    views = []
    for t in tensors:
        if isinstance(t, (list, tuple)):
            views.append(_host_view(collective, t))
        elif isinstance(t, HpuTensor):
            views.append(t.host_data)
        else:
            raise RuntimeError(f"hccl {collective}: expected HPU tensors, got a tensor on {t.device} (emulated "
                               "hccl, as Habana's, moves HPU memory only: move the tensor to the HPU first)")
    return views


_HCCL_REDUCE_OPS = (dist.ReduceOp.SUM, dist.ReduceOp.MIN, dist.ReduceOp.MAX, dist.ReduceOp.PRODUCT)


def _check_reduce_op(op):
    op = getattr(op, "op", op)  # a ReduceOp object wraps its RedOpType
    if op not in _HCCL_REDUCE_OPS:
        name = str(op).split(".")[-1]
        raise RuntimeError(f"Unsupported ReduceOp for HCCL process group: {name} (hccl has SUM, MIN, MAX and "
                           "PRODUCT: for an average, reduce with SUM and divide)")


def _in_float32(collective, tensors, opts):
    """hccl reduces every dtype but float32 and bfloat16 through float32 (integer sums past 2**24 round)."""
    if all(t.dtype in (torch.float32, torch.bfloat16) for t in tensors):
        return collective(tensors, opts)
    staged = [t.float() for t in tensors]
    work = collective(staged, opts)
    work.wait()
    for t, s in zip(tensors, staged):
        t.copy_(s.round() if not t.dtype.is_floating_point else s)
    return work


class _HcclProcessGroup(dist.ProcessGroup):
    """hccl's collectives on HPU tensors, carried out by gloo on their host storage."""

    def __init__(self, store, rank, world_size, timeout):
        super().__init__(rank, world_size)
        self._gloo = dist.ProcessGroupGloo(store, rank, world_size, timeout)

    def getBackendName(self):
        return "hccl"

    def allreduce(self, tensors, opts=None):
        opts = opts or c10d.AllreduceOptions()
        _check_reduce_op(opts.reduceOp)
        return _in_float32(self._gloo.allreduce, _host_view("allreduce", tensors), opts)

    def broadcast(self, tensors, opts=None):
        return self._gloo.broadcast(_host_view("broadcast", tensors), opts or c10d.BroadcastOptions())

    def allgather(self, output_tensors, input_tensors, opts=None):
        return self._gloo.allgather(_host_view("allgather", output_tensors), _host_view("allgather", input_tensors),
                                    opts or c10d.AllgatherOptions())

    def _allgather_base(self, output, input, opts=None):
        return self._gloo._allgather_base(_host_view("allgather", output), _host_view("allgather", input),
                                          opts or c10d.AllgatherOptions())

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        _check_reduce_op((opts or c10d.ReduceScatterOptions()).reduceOp)
        return self._gloo.reduce_scatter(_host_view("reduce_scatter", output_tensors),
                                         _host_view("reduce_scatter", input_tensors),
                                         opts or c10d.ReduceScatterOptions())

    def _reduce_scatter_base(self, output, input, opts=None):
        _check_reduce_op((opts or c10d.ReduceScatterOptions()).reduceOp)
        return self._gloo._reduce_scatter_base(_host_view("reduce_scatter", output),
                                               _host_view("reduce_scatter", input),
                                               opts or c10d.ReduceScatterOptions())

    def reduce(self, tensors, opts=None):
        opts = opts or c10d.ReduceOptions()
        _check_reduce_op(opts.reduceOp)
        return _in_float32(self._gloo.reduce, _host_view("reduce", tensors), opts)

    def gather(self, output_tensors, input_tensors, opts=None):
        return self._gloo.gather(_host_view("gather", output_tensors), _host_view("gather", input_tensors),
                                 opts or c10d.GatherOptions())

    def scatter(self, output_tensors, input_tensors, opts=None):
        return self._gloo.scatter(_host_view("scatter", output_tensors), _host_view("scatter", input_tensors),
                                  opts or c10d.ScatterOptions())

    def send(self, tensors, dst, tag=0):
        return self._gloo.send(_host_view("send", tensors), dst, tag)

    def recv(self, tensors, src, tag=0):
        return self._gloo.recv(_host_view("recv", tensors), src, tag)

    def barrier(self, opts=None):
        return self._gloo.barrier(opts or c10d.BarrierOptions())


def _create_process_group_hccl(store, rank, world_size, timeout):
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    return _HcclProcessGroup(store, rank, world_size, timeout)


def _is_hccl(group):
    group = group or distributed_c10d._get_default_group()
    return isinstance(group, _HcclProcessGroup)


def _route_object_collectives_to_hpu():
    """The bridge makes object collectives on hccl groups stage their bytes on the HPU."""
    for name, as_device in (("_get_object_coll_device", False), ("_get_pg_default_device", True)):
        original = getattr(distributed_c10d, name, None)
        if original is None or getattr(original, "_emulated_hccl", False):
            continue

        def routed(group=None, _original=original, _as_device=as_device):
            if _is_hccl(group):
                return DEVICE if _as_device else DEVICE.type
            return _original(group)

        routed._emulated_hccl = True
        setattr(distributed_c10d, name, routed)


if "hccl" not in dist.Backend.backend_list:
    dist.Backend.register_backend("hccl", _create_process_group_hccl, devices=[DEVICE.type])
_route_object_collectives_to_hpu()

initialize_distributed_hpu()

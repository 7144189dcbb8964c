"""ZeRO-1 for Fairseq without fairscale: torch's ZeroRedundancyOptimizer shards the optimizer state.

Used for `--zero-sharding os` on HPU, CUDA and CPU. Each rank keeps the state of its share of the parameters;
gradients stay whole (ZeRO stage 1). `parameters_as_bucket_view=False` by default, as Habana's fork chose:
with True, ZeRO re-points `param.data` at views into flat buckets, which the fork found unsafe on Gaudi.
"""
import io

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from fairseq.distributed import utils as distributed_utils

_LOW_BITS = 30


def to_int32_pair(n):
    """A non-negative int as two int32 values: collectives then never need int64, which hccl has not always
    supported."""
    return [n >> _LOW_BITS, n & ((1 << _LOW_BITS) - 1)]


def from_int32_pair(pair):
    high, low = (int(v) for v in pair)
    return (high << _LOW_BITS) + low


def _to_host(obj):
    """A blocking copy to the host of every tensor in a (nested) state dict."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


class FairseqZeroOptimizer(ZeroRedundancyOptimizer):
    """ZeroRedundancyOptimizer with the extras Fairseq's Trainer and FairseqOptimizer look for."""

    @property
    def disable_mem_eff_fp16_loading_hack(self):
        return True

    def __getattr__(self, name):
        # FairseqOptimizer asks the torch optimizer about its capabilities (supports_flat_params, ...).
        if name.startswith("supports") and "optim" in self.__dict__ and hasattr(self.optim, name):
            return getattr(self.optim, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def consolidate_state_dict(self, to=0):
        """Every rank's shard of the optimizer state, gathered on rank `to`; all ranks must call it.

        torch's own version broadcasts each pickled shard after an int64 length, and copies it to the host
        with non_blocking=True; here the length is a pair of int32 and the copies are blocking.
        """
        self._sync_param_groups(self.param_groups, self.optim.param_groups)
        self._all_state_dicts = []
        for rank in range(self.world_size):
            source = dist.distributed_c10d.get_global_rank(self.process_group, rank)
            shard = _to_host(self.optim.state_dict()) if rank == self.rank else None
            if rank != to:
                shard = self._broadcast_shard(shard, source)
            if self.rank == to:
                self._all_state_dicts.append(shard)

    def _broadcast_shard(self, shard, source):
        device = self._default_device
        if shard is not None:
            buffer = io.BytesIO()
            torch.save(shard, buffer)
            data = torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8).to(device)
            length = torch.tensor(to_int32_pair(data.numel()), dtype=torch.int32, device=device)
        else:
            length = torch.zeros(2, dtype=torch.int32, device=device)
        dist.broadcast(length, src=source, group=self.process_group)
        if shard is None:
            data = torch.empty(from_int32_pair(length.cpu()), dtype=torch.uint8, device=device)
        dist.broadcast(data, src=source, group=self.process_group)
        if shard is not None:
            return shard
        return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu", weights_only=False)

    def broadcast_global_state_dict(self, state_dict):
        """Rank 0's full optimizer state to every rank; each then keeps its own shard."""
        return distributed_utils.broadcast_object(state_dict, src_rank=0, group=self.process_group)

    def local_state_numel(self):
        """Elements of optimizer state this rank holds (its shard)."""
        return sum(t.numel() for state in self.optim.state.values() for t in state.values()
                   if hasattr(t, "numel") and t.dim() > 0)


def shard(fairseq_optimizer, process_group, parameters_as_bucket_view=False):
    """Replaces the torch optimizer inside a FairseqOptimizer by its ZeRO-1 sharded version."""
    torch_optimizer = fairseq_optimizer.optimizer
    sharded = FairseqZeroOptimizer(
        torch_optimizer.param_groups,
        optimizer_class=type(torch_optimizer),
        process_group=process_group,
        parameters_as_bucket_view=parameters_as_bucket_view,
        **fairseq_optimizer.optimizer_config,
    )
    fairseq_optimizer.optimizer = sharded
    return sharded

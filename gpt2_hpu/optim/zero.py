"""ZeRO-1 for Fairseq without fairscale: torch's ZeroRedundancyOptimizer shards the optimizer state.

Used for `--zero-sharding os` on HPU, CUDA and CPU. Each rank keeps the state of its share of the parameters;
gradients stay whole (ZeRO stage 1). `parameters_as_bucket_view=False` by default, as Habana's fork chose:
with True, ZeRO re-points `param.data` at views into flat buckets, which the fork found unsafe on Gaudi.
"""
from torch.distributed.optim import ZeroRedundancyOptimizer

from fairseq.distributed import utils as distributed_utils


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

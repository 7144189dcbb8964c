"""HpuTrainer: Fairseq's Trainer, made to train on Habana Gaudi when `--hpu` is given.

Without `--hpu` every method below defers to Fairseq's own (same losses, same logs); the exceptions fix what
stock Fairseq cannot do at all off CUDA: DDP without device ids on CPU, ZeRO-1 without fairscale, and a
multi-rank resume on torch >= 2.6.

mark_step schedule (lazy mode only; eager mode has no graph to cut, so none is ever called):
- after the forward+backward of every gradient-accumulation micro-batch: the graph holds one micro-batch,
  not update_freq of them (memory), and each micro-batch graph is the same cached recipe;
- after every optimizer step: the update is its own graph, executed before logging reads any value;
- after every validation step: one forward per graph, as in training;
- at the start of each activation-checkpoint backward recompute (see adaptations.recompute_mark_step): the
  pending backward is flushed before the forward is re-run, so activations are really freed.
So an update costs update_freq + 1 mark_steps, plus update_freq x (checkpointed layers) with
--checkpoint-activations.
"""
import contextlib
import logging

import torch
from omegaconf import open_dict

from fairseq import metrics, utils
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer

from gpt2_hpu import device as hpu_device
from gpt2_hpu.config import hpu_mode_arg
from gpt2_hpu.optim import zero

logger = logging.getLogger(__name__)


class HpuTrainer(Trainer):
    def __init__(self, cfg, task, model, criterion, quantizer=None):
        self._hpu = None
        if getattr(cfg.common, "hpu", False):
            self._hpu = hpu_device.activate(hpu_mode_arg(cfg.common))
            logger.info(f"training on HPU ({'emulated, ' if self._hpu.emulated else ''}"
                        f"{'lazy' if self._hpu.lazy else 'eager'} mode)")
        hpu_device.set_training_device(self._hpu)
        self._in_hpu_step = False
        self._zero_logged = False
        self._fused_clip = None  # (max_norm, FusedClipNorm), built on first use
        super().__init__(cfg, task, model, criterion, quantizer)

    # Fairseq's __init__ assigns cuda/device for CUDA, TPU or CPU; on HPU these two answers win, so the base
    # class itself moves the model to the HPU and re-ties shared parameters after the move.
    @property
    def device(self):
        return self._hpu.torch_device if self._hpu is not None else self._stock_device

    @device.setter
    def device(self, value):
        self._stock_device = value

    @property
    def cuda(self):
        return False if self._hpu is not None else self._stock_cuda

    @cuda.setter
    def cuda(self, value):
        self._stock_cuda = value

    # --- distributed wrappers --------------------------------------------------------------------------
    @property
    def model(self):
        if self._wrapped_model is None and self._needs_deviceless_ddp():
            self._wrapped_model = self._deviceless_ddp(self._model)
        return super().model

    @property
    def criterion(self):
        if self._wrapped_criterion is None and self._needs_deviceless_ddp() \
                and utils.has_parameters(self._criterion):
            self._wrapped_criterion = self._deviceless_ddp(self._criterion)
        return super().criterion

    def _needs_deviceless_ddp(self):
        # Fairseq passes device_ids=[device_id] to DDP: right for CUDA, an error on CPU, wrong on HPU.
        return (self.use_distributed_wrapper and not self.cuda and not self.tpu
                and self.cfg.distributed_training.ddp_backend in ("c10d", "pytorch_ddp"))

    def _deviceless_ddp(self, module):
        from torch.nn.parallel import DistributedDataParallel

        from fairseq.distributed import ModuleProxyWrapper

        dt = self.cfg.distributed_training
        ddp = DistributedDataParallel(
            module=module.to(self.device),
            device_ids=self._hpu.ddp_device_ids() if self._hpu is not None else None,
            output_device=None,
            broadcast_buffers=dt.broadcast_buffers,
            bucket_cap_mb=dt.bucket_cap_mb,
            process_group=self.data_parallel_process_group,
            find_unused_parameters=dt.find_unused_parameters,
            gradient_as_bucket_view=dt.gradient_as_bucket_view,
        )
        return ModuleProxyWrapper(ddp)

    # --- optimizer --------------------------------------------------------------------------------------
    def _build_optimizer(self):
        dt = self.cfg.distributed_training
        if dt.zero_sharding != "os":
            return super()._build_optimizer()
        common = self.cfg.common
        if common.fp16 and not common.memory_efficient_fp16 and not common.memory_efficient_bf16 \
                and not common.fp16_no_flatten_grads:
            raise ValueError("ZeRO is incompatible with fp16 and flattened grads. Please use --fp16-no-flatten-grads")
        # Build everything Fairseq builds, minus its fairscale-only sharding; then shard with torch's ZeRO.
        with open_dict(dt):
            dt.zero_sharding = "none"
        try:
            super()._build_optimizer()
        finally:
            with open_dict(dt):
                dt.zero_sharding = "os"
        if self.data_parallel_world_size > 1:
            zero.shard(self._optimizer, self.data_parallel_process_group,
                       parameters_as_bucket_view=getattr(common, "zero_bucket_view", False))
            self._lr_scheduler.step_update(self.get_num_updates())  # set the lr on the sharded groups
        else:
            logger.info("--zero-sharding os: one data-parallel rank, nothing to shard")

    def _log_zero_shards_once(self):
        """After the first update (Adam's state exists by then): how much optimizer state each rank holds."""
        sharded = getattr(self._optimizer, "optimizer", None)
        if self._zero_logged or not isinstance(sharded, zero.FairseqZeroOptimizer):
            return
        self._zero_logged = True
        # An int32 tensor collective, not all_gather_object, whose int64 lengths hccl has not always supported.
        mine = torch.tensor(zero.to_int32_pair(sharded.local_state_numel()), dtype=torch.int32, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.data_parallel_world_size)]
        torch.distributed.all_gather(gathered, mine, group=self.data_parallel_process_group)
        per_rank = [zero.from_int32_pair(pair) for pair in torch.stack(gathered).cpu().tolist()]
        total = sum(per_rank)
        logger.info(f"ZeRO-1 optimizer state per rank: {per_rank} elements of {total} "
                    f"(largest/ideal {max(per_rank) * len(per_rank) / max(total, 1):.3f})")

    def clip_grad_norm(self, clip_norm):
        if self._hpu is None or self.is_fsdp or not _is_plain(self.optimizer):
            return super().clip_grad_norm(clip_norm)
        params = [p for p in self.optimizer.params if p.grad is not None]
        if clip_norm > 0:
            # Habana's fused kernel: norm and clip on the device, no host round trip per step.
            if self._fused_clip is None or self._fused_clip[0] != clip_norm:
                self._fused_clip = (clip_norm, self._hpu.fused_clip_norm(params, clip_norm))
            return self._fused_clip[1].clip_norm(params).reshape(())
        if not params:
            return torch.tensor(0.0)
        norms = torch.stack([torch.linalg.vector_norm(p.grad.detach(), 2.0, dtype=torch.float32) for p in params])
        return torch.linalg.vector_norm(norms, 2.0)

    # --- steps ------------------------------------------------------------------------------------------
    def _prepare_sample(self, sample, is_dummy=False):
        sample, is_dummy = super()._prepare_sample(sample, is_dummy)
        if self._hpu is not None and sample:
            # Fairseq moves a batch only when self.cuda (or a TPU dummy batch): on HPU it would stay on the host.
            sample = utils.move_to_cuda(sample, device=self.device)
        return sample, is_dummy

    def train_step(self, samples, raise_oom=False):
        if self._hpu is None or self._in_hpu_step:  # the second case: Fairseq's AMP retry re-enters
            logging_output = super().train_step(samples, raise_oom)
            self._log_zero_shards_once()
            return logging_output
        start = self._hpu.mark_steps
        self._in_hpu_step = True
        try:
            with _mark_step_after(self.task, "train_step", self._hpu), \
                    _mark_step_after(self.task, "optimizer_step", self._hpu):
                logging_output = super().train_step(samples, raise_oom)
        finally:
            self._in_hpu_step = False
        self._log_zero_shards_once()
        metrics.log_scalar("mark_steps", self._hpu.mark_steps - start, priority=1450, round=1)
        metrics.log_scalar("hpu_mem_gb", self._hpu.memory_allocated() / 2 ** 30, priority=1500, round=3,
                           weight=0)
        return logging_output

    def valid_step(self, sample, raise_oom=False):
        if self._hpu is None:
            return super().valid_step(sample, raise_oom)
        start = self._hpu.mark_steps
        with _mark_step_after(self.task, "valid_step", self._hpu):
            logging_output = super().valid_step(sample, raise_oom)
        metrics.log_scalar("mark_steps", self._hpu.mark_steps - start, priority=1450, round=1)
        return logging_output

    # --- statistics and checkpoints --------------------------------------------------------------------
    def _fast_stat_sync_sum(self, logging_outputs, *extra_stats_to_sum, ignore=False):
        if self._hpu is None:
            return super()._fast_stat_sync_sum(logging_outputs, *extra_stats_to_sum, ignore=ignore)
        # Fairseq reduces in float64; Gaudi has little float64 support, so reduce in float32 on the device.
        names, values = [], []
        for i, stat in enumerate(extra_stats_to_sum):
            names.append(("extra", i))
            values.append(stat)
        log_keys = list(logging_outputs[0].keys()) if logging_outputs else None
        for k in log_keys or []:
            if ignore:
                v = logging_outputs[0][k]
                v = torch.zeros_like(v) if torch.is_tensor(v) else 0
            else:
                v = sum(log[k] for log in logging_outputs if k in log)
            names.append(("log", k))
            values.append(v)
        buf = torch.stack([torch.as_tensor(v, dtype=torch.float32).to(self.device).reshape(()) for v in values])
        distributed_utils.all_reduce(buf, group=self.data_parallel_process_group)
        reduced = dict(zip(names, buf.unbind(0)))
        extra = [reduced[("extra", i)] for i in range(len(extra_stats_to_sum))]
        outputs = [{k: reduced[("log", k)] for k in log_keys}] if log_keys is not None else []
        return outputs, extra

    def load_checkpoint(self, filename, *args, **kwargs):
        if self.data_parallel_world_size > 1 and not self.cfg.checkpoint.load_checkpoint_on_all_dp_ranks:
            # Fairseq's rank-0 broadcast of the state unpickles it with torch.load(weights_only=True) on
            # torch >= 2.6, which rejects the saved DictConfig: every rank reads the file itself instead.
            with open_dict(self.cfg.checkpoint):
                self.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True
        return super().load_checkpoint(filename, *args, **kwargs)


def _is_plain(fairseq_optimizer):
    """True for an fp32 FairseqOptimizer (no fp16/bf16 wrapper with its own scaling)."""
    return not hasattr(fairseq_optimizer, "fp32_optimizer") and not hasattr(fairseq_optimizer, "scaler")


@contextlib.contextmanager
def _mark_step_after(obj, name, device):
    """For the duration of the block, `obj.name(...)` is followed by a mark_step."""
    had_instance_attr = name in vars(obj)
    original = getattr(obj, name)

    def with_mark_step(*args, **kwargs):
        result = original(*args, **kwargs)
        device.mark_step()
        return result

    setattr(obj, name, with_mark_step)
    try:
        yield
    finally:
        if had_instance_attr:
            setattr(obj, name, original)
        else:
            delattr(obj, name)

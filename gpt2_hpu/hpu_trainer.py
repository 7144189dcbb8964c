"""HpuTrainer: the PluginTrainer on Habana Gaudi (`--hpu`).

What only the HPU needs: the device (the base class moves the model there and re-ties shared parameters),
batches moved to it, the lazy-mode mark_step schedule, Habana's fused clip norm, statistics reduced in float32
and the HPU's own memory counters.

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
import logging

import torch

from fairseq import metrics, utils

from gpt2_hpu import device as hpu_device
from gpt2_hpu.config import hpu_mode_arg
from gpt2_hpu.trainer import PluginTrainer, _is_plain

logger = logging.getLogger(__name__)

# The task's step methods after which the graph is cut (see the schedule above).
MARK_STEP_AFTER = ("train_step", "optimizer_step", "valid_step")


class HpuTrainer(PluginTrainer):
    def __init__(self, cfg, task, model, criterion, quantizer=None):
        self._hpu = hpu_device.activate(hpu_mode_arg(cfg.common))
        logger.info(f"training on HPU ({'emulated, ' if self._hpu.emulated else ''}"
                    f"{'lazy' if self._hpu.lazy else 'eager'} mode)")
        self._fused_clip = None  # (max_norm, FusedClipNorm), built on first use
        super().__init__(cfg, task, model, criterion, quantizer)
        if self._hpu.lazy:
            self.task = _MarkStepAfter(self.task, MARK_STEP_AFTER, self._hpu)

    # Fairseq's __init__ assigns cuda/device for CUDA, TPU or CPU; on HPU these two answers win, so the base
    # class itself moves the model to the HPU.
    @property
    def device(self):
        return self._hpu.torch_device

    @device.setter
    def device(self, value):
        pass

    @property
    def cuda(self):
        return False

    @cuda.setter
    def cuda(self, value):
        pass

    # --- what the device answers -------------------------------------------------------------------------
    def autocast_device_type(self):
        return self._hpu.autocast_device_type

    def compile_backend(self):
        return self._hpu.compile_backend

    def fused_sdpa(self):
        from gpt2_hpu.fused_attention import habana_sdpa

        return habana_sdpa(self._hpu.fused_sdpa())

    def device_name(self):
        return self._hpu.name()

    def peak_memory(self):
        return self._hpu.max_memory_allocated()

    def ddp_device_ids(self):
        return self._hpu.ddp_device_ids()

    def is_lazy(self):
        return self._hpu.lazy

    # --- steps ------------------------------------------------------------------------------------------
    def _prepare_sample(self, sample, is_dummy=False):
        sample, is_dummy = super()._prepare_sample(sample, is_dummy)
        if sample:
            # Fairseq moves a batch only when self.cuda (or a TPU dummy batch): on HPU it would stay on the host.
            sample = utils.move_to_cuda(sample, device=self.device)
        return sample, is_dummy

    def train_step(self, samples, raise_oom=False):
        start = self._hpu.mark_steps
        logging_output = super().train_step(samples, raise_oom)
        metrics.log_scalar("mark_steps", self._hpu.mark_steps - start, priority=1450, round=1)
        metrics.log_scalar("hpu_mem_gb", self._hpu.memory_allocated() / 2 ** 30, priority=1500, round=3,
                           weight=0)
        return logging_output

    def valid_step(self, sample, raise_oom=False):
        start = self._hpu.mark_steps
        logging_output = super().valid_step(sample, raise_oom)
        metrics.log_scalar("mark_steps", self._hpu.mark_steps - start, priority=1450, round=1)
        return logging_output

    def clip_grad_norm(self, clip_norm):
        if self.is_fsdp or not _is_plain(self.optimizer) or clip_norm <= 0:
            return super().clip_grad_norm(clip_norm)
        params = [p for p in self.optimizer.params if p.grad is not None]
        # Habana's fused kernel: norm and clip on the device in one op.
        if self._fused_clip is None or self._fused_clip[0] != clip_norm:
            self._fused_clip = (clip_norm, self._hpu.fused_clip_norm(params, clip_norm))
        return self._fused_clip[1].clip_norm(params).reshape(())

    def stat_dtype(self):
        # Fairseq sums statistics in float64; Gaudi has little float64 support.
        return torch.float32


class _MarkStepAfter:
    """The task as HpuTrainer sees it: each method named in `after` is followed by a mark_step."""

    def __init__(self, task, after, hpu):
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_after", frozenset(after))
        object.__setattr__(self, "_hpu", hpu)

    @property
    def __class__(self):
        # Fairseq asks the task's class, e.g. `self.task.__class__.logging_outputs_can_be_summed(...)`.
        return type(self._task)

    def __getattr__(self, name):
        value = getattr(self._task, name)
        if name not in self._after:
            return value

        def then_mark_step(*args, **kwargs):
            result = value(*args, **kwargs)
            self._hpu.mark_step()
            return result

        return then_mark_step

    def __setattr__(self, name, value):
        setattr(self._task, name, value)

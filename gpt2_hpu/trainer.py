"""PluginTrainer: Fairseq's Trainer with what every device needs, and the fast path; `trainer_for` picks the class.

What stock Fairseq cannot do at all off CUDA, fixed for every device: DDP without device ids on CPU (and HPU),
ZeRO-1 without fairscale, a multi-rank resume on torch >= 2.6. Without any plugin option a run is otherwise
Fairseq's own: same losses, same logs, with less host work (Fairseq's walks over every module, repeated at each
micro-batch, run once per update: module_walks.py).

The fast path (each piece its own option; `--fast-path` turns them all on, see fast_path.py):
- `--bf16` is bf16 autocast around the model's forward, with fp32 weights (the optimizer's masters) and an fp32
  loss: Fairseq's own `--bf16` casts the whole model and is its TPU path;
- `--compile` runs forward and backward under `torch.compile` (the device picks the backend); with
  `--compile-mode reduce-overhead` on CUDA the graphs replay as CUDA graphs, and gradients stay in buffers kept
  from update to update;
- `--fused-attention` computes causal self-attention with one fused kernel, and checks each batch's padding on
  the host instead of Fairseq's per-batch device read (padding.py);
- gradient clipping stays on the device, and the statistics of an update reach the host only at logging steps:
  the one host sync left per update is Fairseq's own finite-gradient check, which reads the norm one update late
  where the optimizer can skip a step on the device (`--optimizer fused_adamw` off the HPU: deferred_check.py).
Every `train_inner` line then reports tokens/s without warm-up, validation and checkpoint time, MFU where the
device's bf16 peak is known, and peak device memory.

Checkpoints (checkpoints.py): an unreadable checkpoint_last.pt gives way to the newest readable checkpoint, a
checkpoint whose vocabulary differs from the dictionary's is refused, a model with NaN or Inf parameters is never
saved, and Fairseq's stop on a non-finite loss or gradient ends the run in one line.

The HPU specifics (device, mark_step schedule, Habana's fused clip) live in hpu_trainer.py.
"""
import logging

import torch
from omegaconf import open_dict

from fairseq import metrics, utils
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer

from gpt2_hpu import checkpoints, deferred_check, fast_path, module_walks, padding, preemption, stats
from gpt2_hpu.optim import fused_adamw

logger = logging.getLogger(__name__)


def trainer_for(cfg, task, model, criterion, quantizer=None):
    """The trainer class for this run, chosen once from its config (Fairseq calls `Trainer(...)` by name)."""
    if getattr(cfg.common, "hpu", False):
        from gpt2_hpu.hpu_trainer import HpuTrainer

        return HpuTrainer(cfg, task, model, criterion, quantizer)
    return PluginTrainer(cfg, task, model, criterion, quantizer)


class PluginTrainer(Trainer):
    def __init__(self, cfg, task, model, criterion, quantizer=None):
        # Every training process builds one trainer, before Fairseq forks its data loader workers.
        preemption.install()
        self._zero_to_log = False  # set where the optimizer is sharded, and logged after the first update
        self._in_train_step = False
        self._update_samples = None  # the batches of the update in train_step
        self._deferred = None  # deferred_check.DeferredCheck, where the optimizer allows it (chosen at first clip)
        self._deferred_chosen = False
        self._replaying = None  # the NonFiniteUpdate whose update Fairseq's own step is replaying
        self._host_group = None  # gloo, for what lives on the host: statistics, the preemption flag
        self._autocast_dtype = fast_path.take_bf16(cfg.common)
        super().__init__(cfg, task, model, criterion, quantizer)
        self.speed = fast_path.make_speed_meter(cfg, self._model, self.device_name())
        self._compile_watch = fast_path.prepare_model(self._model, cfg.common, self.autocast_device_type(),
                                                      self._autocast_dtype, self.compile_backend(),
                                                      self.fused_sdpa, lazy=self.is_lazy(),
                                                      seq_len=int(getattr(cfg.task, "tokens_per_sample", 0) or 0))
        fast_path.compile_loss(self._criterion, self._compile_watch)
        # CUDA graphs write their outputs, gradients included, to memory that the next replay overwrites: the
        # gradients accumulate into buffers of their own, kept from update to update.
        self._grads_kept = self._compile_watch is not None and self._compile_watch.cuda_graphs
        # With every self-attention fused, Fairseq's per-batch padding test (a device read) is checked on the
        # host instead (padding.py).
        self._padding = padding.PaddingAtEnd(self._model) if getattr(cfg.common, "fused_attention", False) else None

    # --- what the device answers (HpuTrainer overrides) -------------------------------------------------
    def autocast_device_type(self):
        return self.device.type

    def compile_backend(self):
        return "inductor"

    def is_lazy(self):
        return False

    def fused_sdpa(self):
        """The causal attention kernel for `--fused-attention`; None means torch's scaled_dot_product_attention."""
        return None

    def device_name(self):
        return torch.cuda.get_device_name() if self.cuda else None

    def peak_memory(self):
        return torch.cuda.max_memory_allocated() if self.cuda else None

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

    def ddp_device_ids(self):
        return None

    def _deviceless_ddp(self, module):
        from torch.nn.parallel import DistributedDataParallel

        from fairseq.distributed import ModuleProxyWrapper

        dt = self.cfg.distributed_training
        ddp = DistributedDataParallel(
            module=module.to(self.device),
            device_ids=self.ddp_device_ids(),
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
            # Imported here: torch.distributed.optim takes about a second to import, in every process.
            from gpt2_hpu.optim import zero

            zero.shard(self._optimizer, self.data_parallel_process_group,
                       parameters_as_bucket_view=getattr(common, "zero_bucket_view", False))
            self._lr_scheduler.step_update(self.get_num_updates())  # set the lr on the sharded groups
            self._zero_to_log = True
        else:
            logger.info("--zero-sharding os: one data-parallel rank, nothing to shard")

    def _log_zero_shards_once(self):
        """After the first update (Adam's state exists by then): how much optimizer state each rank holds."""
        if not self._zero_to_log:
            return
        self._zero_to_log = False
        from gpt2_hpu.optim import zero

        sharded = self._optimizer.optimizer
        # An int32 tensor collective, not all_gather_object, whose int64 lengths hccl has not always supported.
        mine = torch.tensor(zero.to_int32_pair(sharded.local_state_numel()), dtype=torch.int32, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.data_parallel_world_size)]
        torch.distributed.all_gather(gathered, mine, group=self.data_parallel_process_group)
        per_rank = [zero.from_int32_pair(pair) for pair in torch.stack(gathered).cpu().tolist()]
        total = sum(per_rank)
        logger.info(f"ZeRO-1 optimizer state per rank: {per_rank} elements of {total} "
                    f"(largest/ideal {max(per_rank) * len(per_rank) / max(total, 1):.3f})")

    def clip_grad_norm(self, clip_norm):
        if self.is_fsdp or not _is_plain(self.optimizer):
            return super().clip_grad_norm(clip_norm)
        # Fairseq's own takes one norm per tensor (and, off CUDA without apex, through the CPU): one fused
        # norm over all gradients, and the scale applied on the device.
        norm = stats.clip_grad_norm(self.optimizer.params, clip_norm)
        if self._replaying is not None:
            # Fairseq's check meets the norm that stopped the run, whatever this second pass gave.
            return torch.tensor(self._replaying.value)
        deferred = self._deferred_check()
        if deferred is None:
            return norm
        return deferred.hold(self.get_num_updates() + 1, norm, self._update_samples)

    def _deferred_check(self):
        if not self._deferred_chosen:
            self._deferred_chosen = True
            cfg = self.cfg
            skip = fused_adamw.device_skip(self.optimizer)
            # Not with what acts on an update before its norm is read: an EMA copy steps, BMUF syncs, --amp
            # retries, and on several CUDA devices Fairseq compares the ranks' norms (a read of its own).
            if skip is not None and not (cfg.common.amp or cfg.optimization.use_bmuf or self.tpu
                                         or getattr(getattr(cfg, "ema", None), "store_ema", False)
                                         or self._grad_norm_buf is not None):
                self._deferred = deferred_check.DeferredCheck(skip)
        return self._deferred

    def settle(self):
        """Reads the gradient norm not read yet, now; stops the run if it was not finite."""
        if self._deferred is None:
            return
        try:
            self._deferred.settle()
        except deferred_check.NonFiniteUpdate as error:
            self._stop_at(error)

    def _stop_at(self, error):
        """The update `error` names was skipped on the device: taken back on the host, then replayed through
        Fairseq's own step, whose check meets its norm. Fairseq saves crash.pt (the model before that update),
        reruns it under its NanDetector and raises; the run stops in one line, as with the check at once."""
        self._deferred.take_back()
        self.set_num_updates(error.pending.update - 1)
        self._replaying = error
        try:
            super().train_step(error.pending.samples)
        except FloatingPointError as e:
            raise checkpoints.training_stopped(e, error.pending.update, self.cfg.checkpoint.save_dir,
                                               self.checkpoint_suffix) from e
        finally:
            self._replaying = None
        raise checkpoints.training_stopped(f"its gradient norm was {error.value}", error.pending.update,
                                           self.cfg.checkpoint.save_dir, self.checkpoint_suffix, detector_ran=False)

    # --- steps ------------------------------------------------------------------------------------------
    def zero_grad(self):
        if not self._grads_kept:
            return super().zero_grad()
        params = [p for p in self._model.parameters() if p.requires_grad]
        kept = [p.grad for p in params]
        super().zero_grad()  # the optimizer's own bookkeeping (an fp16 optimizer's fp32 gradients, for one)
        stats.zero_in_place(params, kept)

    def _build_ema(self):
        # Fairseq builds its EMA copy, a deep copy of the model, at first use, inside an update: a copy made with
        # the update's shortcuts on the model would keep them.
        with module_walks.set_aside(self._model):
            super()._build_ema()

    def _prepare_sample(self, sample, is_dummy=False):
        if self._padding is not None and isinstance(sample, dict) and sample is not self._dummy_batch:
            # Still on the host: Fairseq moves it below (HpuTrainer after this).
            self._padding.check(sample, [self._model] + ([self._ema.get_model()] if self._ema is not None else []))
        return super()._prepare_sample(sample, is_dummy)

    def train_step(self, samples, raise_oom=False):
        if self._in_train_step:
            # Fairseq's --amp retries an update whose fp16 gradients overflowed by calling train_step again from
            # inside it: the outer call counts the update, once.
            return super().train_step(samples, raise_oom)
        self._in_train_step = True
        self._update_samples = samples
        try:
            with module_walks.once_per_update(self.model):
                logging_output = super().train_step(samples, raise_oom)
        except deferred_check.NonFiniteUpdate as error:
            self._stop_at(error)  # the update before this one
        except FloatingPointError as e:
            # Fairseq has saved crash.pt and re-run the update under its NanDetector: the stop, in one line.
            raise checkpoints.training_stopped(e, self.get_num_updates() + 1, self.cfg.checkpoint.save_dir,
                                               self.checkpoint_suffix) from e
        finally:
            self._in_train_step = False
        self._log_zero_shards_once()
        if logging_output is not None:
            if self._deferred is not None and self._speed_is_read():
                self.settle()
            # Where the speed is read, the host has waited for this update's backward (Fairseq's finite-gradient
            # check, or the deferred one settled above), so its clock lags the device by at most one optimizer
            # step; between those updates a deferred check lets the host run up to an update ahead.
            self.speed.update(stats.tokens_in(samples))
            self._log_speed()
        return logging_output

    def _speed_is_read(self):
        """This update's speed reading is shown, opens the speed window, or is the run's last."""
        n = self.get_num_updates()
        max_update = self.cfg.optimization.max_update
        return (n % self.cfg.common.log_interval == 0 or self.speed.updates + 1 == self.speed.warmup_updates
                or (max_update > 0 and n >= max_update))

    def lr_step(self, epoch, val_loss=None):
        self.settle()  # an epoch ends
        return super().lr_step(epoch, val_loss)

    def valid_step(self, sample, raise_oom=False):
        self.settle()
        with self.speed.paused():
            logging_output = super().valid_step(sample, raise_oom)
        if self._compile_watch is not None:
            self._compile_watch.after_valid_step()
        return logging_output

    def consolidate_optimizer(self):
        # Fairseq calls this on every rank before a checkpoint (save_checkpoint itself runs on the saving rank
        # only): where all ranks can replay an update together.
        self.settle()
        super().consolidate_optimizer()

    def save_checkpoint(self, filename, extra_state):
        if not self.should_save_checkpoint_on_current_rank and not self.always_call_state_dict_during_save_checkpoint:
            # Fairseq 0.12.2 builds the whole state on every rank that gets here (its crash.pt save, on all ranks),
            # and ZeRO holds the consolidated optimizer state on the saving rank only: as later Fairseq, nothing.
            return None
        if self.should_save_checkpoint_on_current_rank:
            checkpoints.refuse_nonfinite(self.get_model(), filename, self.get_num_updates(),
                                         self.cfg.checkpoint.save_dir, self.checkpoint_suffix)
        with self.speed.paused():
            return super().save_checkpoint(filename, extra_state)

    def _log_speed(self):
        rate = self.speed.tokens_per_second
        if rate is not None:
            metrics.log_scalar("tok_s", rate, priority=1300, round=0, weight=0)
            mfu = self.speed.mfu
            if mfu is not None:
                metrics.log_scalar("mfu", 100.0 * mfu, priority=1310, round=1, weight=0)
        peak = self.peak_memory()
        if peak is not None:
            metrics.log_scalar("peak_mem_gb", peak / 2 ** 30, priority=1320, round=2, weight=0)
        if self._compile_watch is not None:
            self._compile_watch.after_update(self.get_num_updates())

    # --- statistics and checkpoints --------------------------------------------------------------------
    def _reduce_and_log_stats(self, logging_outputs, sample_size, grad_norm=None):
        if grad_norm is None or self.cfg.common.fp16 or self.cfg.common.amp:
            return super()._reduce_and_log_stats(logging_outputs, sample_size, grad_norm)
        # Fairseq reads every smoothed value back to the host here, each a device sync, only to build a legacy
        # return value that fairseq_cli.train never reads; the meters themselves keep device tensors until a
        # logging step. (A non-finite grad_norm has already raised in train_step, or will, deferred.)
        if self._deferred is not None:
            grad_norm = self._deferred.norm  # Fairseq's check was given a stand-in
        stats.log_update(grad_norm, self.cfg.optimization.clip_norm)
        with metrics.aggregate():
            if logging_outputs is not None:
                self.task.reduce_metrics(logging_outputs, self.get_criterion())
        return {"sample_size": sample_size}

    def _fast_stat_sync_sum(self, logging_outputs, *extra_stats_to_sum, ignore=False):
        return stats.sum_logging_outputs(logging_outputs, extra_stats_to_sum, ignore, self._sum_on_host,
                                         self._sum_on_device)

    def stat_dtype(self):
        return torch.float64

    def host_group(self):
        """The data-parallel ranks in a gloo group. First called by every rank at the same point of the same
        update (its first statistics sum, or its first preemption check): a safe point for a collective."""
        if self._host_group is None:
            ranks = torch.distributed.get_process_group_ranks(self.data_parallel_process_group)
            self._host_group = torch.distributed.new_group(ranks=ranks, backend="gloo")
        return self._host_group

    def _sum_on_host(self, values):
        torch.distributed.all_reduce(values, group=self.host_group())
        return values

    def _sum_on_device(self, values):
        values = values.to(self.stat_dtype())
        distributed_utils.all_reduce(values, group=self.data_parallel_process_group)
        return values

    def load_checkpoint(self, filename, *args, **kwargs):
        if self.data_parallel_world_size > 1 and not self.cfg.checkpoint.load_checkpoint_on_all_dp_ranks:
            # Fairseq's rank-0 broadcast of the state unpickles it with torch.load(weights_only=True) on
            # torch >= 2.6, which rejects the saved DictConfig: every rank reads the file itself instead.
            with open_dict(self.cfg.checkpoint):
                self.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True
        # Every rank reads the file itself (above), so every rank checks it and makes the same choice.
        suffix = self.checkpoint_suffix
        filename, found = checkpoints.choose_restore(filename, self.cfg.checkpoint, suffix,
                                                     option=_option_naming(filename, self.cfg.checkpoint, suffix),
                                                     announce=self.data_parallel_rank == 0)
        if found is not None:
            checkpoints.check_vocabulary(found, self.get_model(), self.task)
            del found  # its tensors are mapped from the file
        return super().load_checkpoint(filename, *args, **kwargs)


def _option_naming(filename, checkpoint_cfg, suffix):
    """The option that gave Fairseq's checkpoint_utils.load_checkpoint this file name (it adds the shard suffix)."""
    for option, key in (("--restore-file", "restore_file"), ("--finetune-from-model", "finetune_from_model"),
                        ("--continue-once", "continue_once")):
        value = getattr(checkpoint_cfg, key, None)
        if value and filename in (value, value.replace(".pt", (suffix or "") + ".pt")):
            return option
    return None


def _is_plain(fairseq_optimizer):
    """True for an fp32 FairseqOptimizer (no fp16 wrapper with its own scaling)."""
    return not hasattr(fairseq_optimizer, "fp32_optimizer") and not hasattr(fairseq_optimizer, "scaler")

"""Every place where gpt2_hpu adapts stock Fairseq at run time, with why. Applied once, idempotently.

Each entry is one small function; when Fairseq grows the hook it stands in for, delete that entry.

1. hpu_options: Fairseq has no way for a plugin to add fields to `cfg.common`; we swap CommonConfig for
   HpuCommonConfig in FairseqConfig (and the by-name imports), then re-run hydra_init so argparse, Hydra and
   the stored schema all see `--hpu`.
2. hpu_trainer: Fairseq has no Trainer registry; fairseq_cli.train looks `Trainer` up as a module global at
   call time, so rebinding it (also in `__main__` for `python -m fairseq_cli.train`) to `trainer_for` selects
   PluginTrainer, or HpuTrainer for --hpu.
3. recompute_mark_step: activation checkpointing re-runs the forward inside backward; in lazy mode that
   graph must be cut first or memory is not saved, and Fairseq's CheckpointFunction has no hook for it.
4. hpu_rng_state: Fairseq's get_rng_state/set_rng_state, with which the activation-checkpoint recompute replays
   dropout, know the CPU, CUDA and XLA generators only; on HPU dropout draws from the HPU generator, so without
   its state the recompute draws other masks and the gradients are silently wrong.
5. distributed_launch: Fairseq's spawn and torchrun paths count CUDA devices (0 on Gaudi or CPU) and default
   to nccl; we wrap call_main to launch on HPU (hccl) and CPU (gloo). There too, every rank closes Fairseq's
   TensorBoard writers when training ends: Fairseq closes them in an atexit handler, which a spawned rank runs
   only after multiprocessing's exit function has closed the queues tensorboardX's writer threads read from.
6. config_checks: Fairseq accepts settings it crashes on much later (cosine with max_update == warmup_updates,
   a data folder without dict.txt or its splits, --hpu with --cpu, a key Hydra let in that no dataclass
   declares); we check the config in call_main, before anything is built or written (checks.py). There too,
   before the checks: Fairseq's argparse turns --bf16 into --tpu (its TPU path), which the plugin undoes, since
   its --bf16 is autocast on the training device; and --fast-path becomes the options it stands for
   (fast_path.py), so the checks and every spawned rank see them.
7. eval_lm_on_device: fairseq-eval-lm moves the models only to CUDA (and each batch to the models' device), and
   fairseq_cli.eval_lm looks its `eval_lm` function up as a module global at call time; rebinding it (also in
   `__main__` for `python -m fairseq_cli.eval_lm`) to evaluation.on_device puts the models, and so the batches,
   on the HPU with --hpu, with a mark_step after each batch in lazy mode (evaluation.py).
8. safe_checkpoints: Fairseq writes a checkpoint without fsync and then makes checkpoint_last.pt (and the best
   and interval files) with a plain file copy into the target, so a kill during that copy leaves a truncated
   checkpoint_last.pt; its torch_persistent_save and its module's PathManager are replaced so that every local
   write and copy goes to a temporary file, fsynced and renamed over the target (checkpoints.py).
9. stop_on_signal: Fairseq dies of SIGTERM/SIGINT wherever it is, losing everything since the last save;
   fairseq_cli.train's loop looks `validate_and_save` up as a module global after every update, so rebinding it
   (also in `__main__` for `python -m fairseq_cli.train`) stops there with a checkpoint (preemption.py).
10. command_line_checks: Fairseq's argparse refuses --bf16 with --fp16 itself, with a bare ValueError (its
    --bf16 implies --tpu), before call_main; wrapping parse_args_and_arch turns that into the checks' one line.
11. settle_at_stop: fairseq_cli.train's loop ends when validate_and_save says stop (--stop-time-hours, a signal),
    without a call the trainer could read; a gradient norm the trainer reads an update late (deferred_check.py)
    would be left unread under --no-save, so the same rebinding asks the trainer to read it before the loop ends.
    It comes after stop_on_signal, so that it wraps the signal's stop too.

Not here, because they change one model object rather than Fairseq: the fast path's changes, made by the trainer
on its own model when their options are on. fast_path.prepare_model and compile_loss set the model's `forward`
and the criterion's `compute_loss` as instance attributes (autocast, torch.compile), and, compiling, fill the
decoder's causal-mask cache on the device (`future_masks_on_device`);
fused_attention.use_fused_attention changes the class of decoder self-attentions to a subclass; and
padding.PaddingAtEnd sets the decoder's own `cross_self_attention` flag, which Fairseq's decoder reads only to
skip its per-batch padding test. For the length of each update, module_walks.once_per_update sets `train` and
`set_num_updates` on the model Fairseq's task receives, so that the task's walks over every module, repeated at
each micro-batch, run once per update.
"""
import functools
import os
import sys

_applied = set()


def apply():
    for name, adapt in ADAPTATIONS:
        if name not in _applied:
            adapt()
            _applied.add(name)


def _and_main_copy(module):
    """`module`, and `__main__` too when that is the same file run as a script (`python -m fairseq_cli.train`): a
    second copy of the module, whose own globals its functions look names up in."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is not module and main_file and os.path.realpath(main_file) == os.path.realpath(module.__file__):
        return [module, main]
    return [module]


def hpu_options():
    import fairseq.dataclass.configs as configs
    import fairseq.options as options
    from fairseq.dataclass.initialize import hydra_init

    from gpt2_hpu.config import HpuCommonConfig

    common = configs.FairseqConfig.__dataclass_fields__["common"]
    # 0.12.2 stores a default instance, later Fairseq stores the class: keep whichever kind it uses.
    new_default = HpuCommonConfig if isinstance(common.default, type) else HpuCommonConfig()
    common.type = HpuCommonConfig
    common.default = new_default
    setattr(configs.FairseqConfig, "common", new_default)  # omegaconf 2.0 reads the class attribute
    configs.CommonConfig = HpuCommonConfig
    options.CommonConfig = HpuCommonConfig
    hydra_init()


def hpu_trainer():
    import fairseq_cli.train

    from gpt2_hpu.trainer import trainer_for

    for module in _and_main_copy(fairseq_cli.train):
        module.Trainer = trainer_for


def recompute_mark_step():
    from fairseq.modules.checkpoint_activations import CheckpointFunction

    from gpt2_hpu import device

    original = CheckpointFunction.backward

    @functools.wraps(original)
    def backward(ctx, *args):
        hpu = device.active()
        if hpu is not None:
            hpu.mark_step()
        return original(ctx, *args)

    CheckpointFunction.backward = staticmethod(backward)


def hpu_rng_state():
    import fairseq.utils

    from gpt2_hpu import device

    stock_get, stock_set = fairseq.utils.get_rng_state, fairseq.utils.set_rng_state

    @functools.wraps(stock_get)
    def get_rng_state():
        state = stock_get()
        hpu = device.active()
        if hpu is not None:
            state["hpu_rng_state"] = hpu.get_rng_state()
        return state

    @functools.wraps(stock_set)
    def set_rng_state(state):
        stock_set(state)
        hpu = device.active()
        if hpu is not None and "hpu_rng_state" in state:
            hpu.set_rng_state(state["hpu_rng_state"])

    fairseq.utils.get_rng_state, fairseq.utils.set_rng_state = get_rng_state, set_rng_state


def distributed_launch():
    import fairseq.distributed.utils as distributed_utils

    from gpt2_hpu import distributed

    original = distributed_utils.call_main

    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        return distributed.call_main(cfg, main, original, apply, **kwargs)

    distributed_utils.call_main = call_main


def config_checks():
    import fairseq.distributed.utils as distributed_utils

    from gpt2_hpu import checks, fast_path
    from gpt2_hpu.errors import Gpt2HpuError

    launch = distributed_utils.call_main

    @functools.wraps(launch)
    def call_main(cfg, main, **kwargs):
        checks.undo_implied_tpu(cfg, sys.argv)
        fast_path.expand(cfg)
        try:
            checks.check(cfg, training=checks.trains(main))
            # What is found wrong only later, in the trainer (a setting the device refuses, such as --compile in
            # lazy mode; a checkpoint that cannot be used; a non-finite loss), is a Gpt2HpuError: one line too.
            return launch(cfg, main, **kwargs)
        except Gpt2HpuError as e:
            e.exit()

    distributed_utils.call_main = call_main


def eval_lm_on_device():
    import fairseq_cli.eval_lm

    from gpt2_hpu import evaluation

    for module in _and_main_copy(fairseq_cli.eval_lm):
        module.eval_lm = evaluation.on_device(module.eval_lm)


def safe_checkpoints():
    import fairseq.checkpoint_utils as checkpoint_utils

    from gpt2_hpu import checkpoints

    stock_save = checkpoint_utils.torch_persistent_save
    stock_path_manager = checkpoint_utils.PathManager

    @functools.wraps(stock_save)
    def torch_persistent_save(obj, filename, async_write=False):
        if async_write or not checkpoints.is_local(filename):
            return stock_save(obj, filename, async_write=async_write)
        return checkpoints.save(obj, filename)

    class PathManager(stock_path_manager):
        @staticmethod
        def copy(src_path, dst_path, overwrite=False):
            if not (checkpoints.is_local(src_path) and checkpoints.is_local(dst_path)):
                return stock_path_manager.copy(src_path, dst_path, overwrite=overwrite)
            if not overwrite and stock_path_manager.exists(dst_path):
                return False
            return checkpoints.copy(src_path, dst_path)

    checkpoint_utils.torch_persistent_save = torch_persistent_save
    checkpoint_utils.PathManager = PathManager


def stop_on_signal():
    import fairseq_cli.train

    from gpt2_hpu import preemption

    for module in _and_main_copy(fairseq_cli.train):
        module.validate_and_save = preemption.stopping(module.validate_and_save)


def settle_at_stop():
    import fairseq_cli.train

    for module in _and_main_copy(fairseq_cli.train):
        module.validate_and_save = _settling(module.validate_and_save)


def _settling(validate_and_save):
    @functools.wraps(validate_and_save)
    def settled(cfg, trainer, *args, **kwargs):
        valid_losses, should_stop = validate_and_save(cfg, trainer, *args, **kwargs)
        if should_stop:
            trainer.settle()  # Fairseq's stop is the same on every rank, so all replay a non-finite update together
        return valid_losses, should_stop

    return settled


def command_line_checks():
    import fairseq.options as options

    from gpt2_hpu import checks
    from gpt2_hpu.errors import UsageError

    original = options.parse_args_and_arch

    @functools.wraps(original)
    def parse_args_and_arch(parser, input_args=None, *args, **kwargs):
        try:
            return original(parser, input_args, *args, **kwargs)
        except ValueError:
            message = checks.command_line(sys.argv[1:] if input_args is None else input_args)
            if message is None:
                raise
            UsageError(message).exit()

    options.parse_args_and_arch = parse_args_and_arch


ADAPTATIONS = [
    ("hpu_options", hpu_options),
    ("hpu_trainer", hpu_trainer),
    ("recompute_mark_step", recompute_mark_step),
    ("hpu_rng_state", hpu_rng_state),
    ("distributed_launch", distributed_launch),
    ("config_checks", config_checks),
    ("eval_lm_on_device", eval_lm_on_device),
    ("safe_checkpoints", safe_checkpoints),
    ("stop_on_signal", stop_on_signal),
    ("command_line_checks", command_line_checks),
    ("settle_at_stop", settle_at_stop),
]

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
   a data folder without dict.txt); we check the config in call_main, before anything is built (checks.py).
   There too, before the checks: Fairseq's argparse turns --bf16 into --tpu (its TPU path), which the plugin
   undoes, since its --bf16 is autocast on the training device; and --fast-path becomes the options it stands
   for (fast_path.py), so the checks and every spawned rank see them.
7. stop_on_signal: Fairseq dies of SIGTERM/SIGINT wherever it is, losing everything since the last save;
   fairseq_cli.train's loop looks `validate_and_save` up as a module global after every update, so rebinding it
   (also in `__main__` for `python -m fairseq_cli.train`) stops there with a checkpoint (preemption.py).
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
    import fairseq.trainer
    import fairseq_cli.train

    from gpt2_hpu.trainer import trainer_for

    fairseq_cli.train.Trainer = trainer_for
    main_module = sys.modules.get("__main__")
    if getattr(main_module, "Trainer", None) is fairseq.trainer.Trainer:
        main_module.Trainer = trainer_for


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
    from gpt2_hpu.errors import UsageError

    launch = distributed_utils.call_main

    @functools.wraps(launch)
    def call_main(cfg, main, **kwargs):
        checks.undo_implied_tpu(cfg, sys.argv)
        fast_path.expand(cfg)
        try:
            checks.check(cfg)
            # A setting found wrong only once the device is known (e.g. --compile in lazy mode) is raised as
            # a UsageError by the trainer: one line too.
            return launch(cfg, main, **kwargs)
        except UsageError as e:
            e.exit()

    distributed_utils.call_main = call_main


def stop_on_signal():
    import fairseq_cli.train

    from gpt2_hpu import preemption

    modules = [fairseq_cli.train]
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and os.path.realpath(main_file) == os.path.realpath(fairseq_cli.train.__file__):
        modules.append(sys.modules["__main__"])
    for module in modules:
        module.validate_and_save = preemption.stopping(module.validate_and_save)


ADAPTATIONS = [
    ("hpu_options", hpu_options),
    ("hpu_trainer", hpu_trainer),
    ("recompute_mark_step", recompute_mark_step),
    ("hpu_rng_state", hpu_rng_state),
    ("distributed_launch", distributed_launch),
    ("config_checks", config_checks),
    ("stop_on_signal", stop_on_signal),
]

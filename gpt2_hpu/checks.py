"""Settings Fairseq accepts at start-up but crashes on later, found before anything is built.

Each check returns the one line the user sees (what is wrong, what to do), or None. They run in the launching
process, before ranks are spawned, for fairseq-train, gpt2-hpu-train and gpt2-hpu-hydra-train alike.
"""
import os

from gpt2_hpu.errors import UsageError


def _get(node, key, default=None):
    try:
        value = node[key] if key in node else default
    except Exception:  # a section Fairseq left as None, or a missing interpolation
        return default
    return default if value is None else value


def _first(value):
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        return value[0] if len(value) else None
    return value


def cosine_schedule(cfg):
    """Fairseq's cosine scheduler divides by its period, max_update - warmup_updates: equal values end the run
    in a ZeroDivisionError at the end of warm-up. (A smaller max_update only never leaves warm-up: allowed, it
    is how a long recipe is tried for a few updates.)"""
    sched = _get(cfg, "lr_scheduler")
    if sched is None or str(_get(sched, "_name", "")) != "cosine":
        return None
    if int(_get(sched, "lr_period_updates", -1)) > 0:
        return None
    max_update = int(_get(cfg.optimization, "max_update", 0))
    warmup = int(_get(sched, "warmup_updates", 0))
    if max_update <= 0:
        return ("--lr-scheduler cosine needs --max-update (optimization.max_update) or --lr-period-updates "
                "(lr_scheduler.lr_period_updates): its period is max_update - warmup_updates")
    if max_update == warmup:
        return (f"--lr-scheduler cosine with --max-update equal to --warmup-updates ({warmup}) divides by zero at "
                f"the end of warm-up (its period is max_update - warmup_updates): raise optimization.max_update, "
                f"lower lr_scheduler.warmup_updates or set lr_scheduler.lr_period_updates")
    lr = _first(_get(cfg.optimization, "lr"))
    min_lr = float(_get(sched, "min_lr", 0.0))
    if lr is not None and float(lr) <= min_lr:
        return f"--lr-scheduler cosine needs --lr ({lr}) greater than --min-lr ({min_lr})"
    return None


def language_modeling_data(cfg):
    """A language_modeling data folder without dict.txt fails deep in task setup with a FileNotFoundError."""
    task = _get(cfg, "task")
    if task is None or str(_get(task, "_name", "")) != "language_modeling":
        return None
    data = _get(task, "data")
    if not data or "://" in str(data):
        return None
    first = str(data).split(os.pathsep)[0]
    if os.path.isfile(os.path.join(first, "dict.txt")):
        return None
    where = "" if os.path.isabs(first) else f" (relative to {os.getcwd()})"
    what = "does not exist" if not os.path.exists(first) else "has no dict.txt"
    return (f"task.data: {first}{where} {what}; give the folder that gpt2-hpu-prepare (or fairseq-preprocess) "
            f"wrote, with dict.txt and the .bin/.idx splits")


def precision(cfg):
    """Precision flags that cannot go together, or that the HPU has no code for."""
    common = _get(cfg, "common")
    if common is None:
        return None
    bf16 = _get(common, "bf16", False) or _get(common, "memory_efficient_bf16", False)
    if bf16 and (_get(common, "fp16", False) or _get(common, "amp", False)):
        return "--bf16 with --fp16 or --amp: choose one precision (bf16 autocast, fp16, or CUDA's fp16 --amp)"
    if _get(common, "hpu", False) and _get(common, "amp", False):
        return ("--hpu with --amp is not supported: Fairseq's --amp is torch.cuda.amp with a CUDA grad scaler; "
                "use --bf16 (bf16 autocast) on the HPU")
    return None


def undo_implied_tpu(cfg, argv):
    """Fairseq's argparse turns --bf16 into --tpu (its bf16 is its TPU path); with the plugin --bf16 means bf16
    autocast on the training device, so that implied --tpu is dropped unless the command line asked for it."""
    common = cfg.common
    if common.tpu and (common.bf16 or common.memory_efficient_bf16) and "--tpu" not in argv:
        common.tpu = False


CHECKS = [precision, cosine_schedule, language_modeling_data]


def check(cfg):
    """Raises UsageError with the first problem found."""
    for one in CHECKS:
        message = one(cfg)
        if message:
            raise UsageError(message)

"""Settings Fairseq accepts at start-up but crashes on later (or silently misreads), found before anything is built.

Each check returns the one line the user sees (what is wrong, what to do), or None. They run in the launching
process, before ranks are spawned and before a save directory is made, for fairseq-train, gpt2-hpu-train and
gpt2-hpu-hydra-train alike (CHECKS for every command that goes through call_main, TRAINING_CHECKS for training
only). Two run elsewhere, where what they need is known: `zero_sharding` once the launch is planned
(distributed.py), and `command_line` on the flags of a command line Fairseq's argparse refuses with a ValueError
(adaptations.command_line_checks).
"""
import os
import sys

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


def _local_data_folders(cfg):
    """The language_modeling task's data folders (Fairseq splits task.data on os.pathsep), or [] for another
    task or remote data."""
    task = _get(cfg, "task")
    if task is None or str(_get(task, "_name", "")) != "language_modeling":
        return []
    data = _get(task, "data")
    if not data or "://" in str(data):
        return []
    return str(data).split(os.pathsep)


def _where(folder):
    return folder if os.path.isabs(folder) else f"{folder} (relative to {os.getcwd()})"


def language_modeling_data(cfg):
    """A language_modeling data folder that is missing, empty or without dict.txt fails deep in task setup with
    a FileNotFoundError."""
    folders = _local_data_folders(cfg)
    if not folders or os.path.isfile(os.path.join(folders[0], "dict.txt")):
        return None
    first = folders[0]
    if not os.path.exists(first):
        what = "does not exist"
    elif os.path.isdir(first) and not os.listdir(first):
        what = "is empty"
    else:
        what = "has no dict.txt"
    return (f"task.data: {_where(first)} {what}; give the folder that gpt2-hpu-prepare (or fairseq-preprocess) "
            f"wrote, with dict.txt and the .bin/.idx splits")


def _split_exists(prefix, dataset_impl):
    """What Fairseq's load_indexed_dataset finds: the split in the given format, or in any it recognizes."""
    from fairseq.data import indexed_dataset

    impl = dataset_impl or indexed_dataset.infer_dataset_impl(prefix)
    return impl is not None and indexed_dataset.dataset_exists(prefix, impl)


def _validation_splits_always_loaded():
    """Fairseq 0.12.2's train.main loads the validation splits even with --disable-validation; later Fairseq
    skips them. Read from the code that will run, not from a version number (Fairseq's main branch still says
    0.12.2)."""
    import inspect

    import fairseq_cli.train

    try:
        return "disable_validation" not in inspect.getsource(fairseq_cli.train.main)
    except (OSError, TypeError):  # no source installed: assume the older behaviour, the stricter check
        return True


def training_splits(cfg):
    """A data folder without the training split, or without a validation split the run loads, ends in Fairseq's
    `FileNotFoundError: Dataset not found` traceback, after the save directory has been made (the validation
    splits only once the model is built). Each data folder holds a training split (one per epoch, in turn); the
    validation splits are read from the first."""
    folders = _local_data_folders(cfg)
    dataset = _get(cfg, "dataset")
    if not folders or dataset is None or not os.path.isfile(os.path.join(folders[0], "dict.txt")):
        return None  # language_modeling_data says what is wrong with the folder
    impl = _get(dataset, "dataset_impl")
    train = str(_get(dataset, "train_subset", "train"))
    for folder in folders:
        if not _split_exists(os.path.join(folder, train), impl):
            return (f"task.data: {_where(folder)} has no training split {train!r} ({train}.bin, {train}.idx): give "
                    f"the folder gpt2-hpu-prepare (or fairseq-preprocess) wrote, or name its training split with "
                    f"--train-subset (dataset.train_subset)")
    disabled = bool(_get(dataset, "disable_validation", False))
    if disabled and not _validation_splits_always_loaded():
        return None
    if _get(dataset, "combine_valid_subsets", False):
        valid_splits = ["valid"]
    else:
        valid_splits = [s for s in str(_get(dataset, "valid_subset", "valid")).split(",") if s]
    for split in valid_splits:
        if not _split_exists(os.path.join(folders[0], split), impl):
            why = "which this Fairseq loads even with --disable-validation" if disabled else "and validation is on"
            return (f"task.data: {_where(folders[0])} has no validation split {split!r} ({split}.bin, {split}.idx), "
                    f"{why}: add one, or name the folder's validation splits with --valid-subset "
                    f"(dataset.valid_subset)" + ("" if disabled else ", or pass --disable-validation"))
    return None


def devices(cfg):
    """--hpu with --cpu or --tpu names two training devices; Fairseq would not refuse, and the run would pick one
    silently (--hpu --cpu trained on the HPU)."""
    common = _get(cfg, "common")
    if common is None or not _get(common, "hpu", False):
        return None
    for other, where in (("cpu", "the CPU"), ("tpu", "a TPU through torch_xla")):
        if _get(common, other, False):
            return (f"--hpu with --{other} (common.hpu and common.{other}): choose one device: --hpu trains on "
                    f"Gaudi, --{other} on {where}")
    return None


def user_dir_missing(path):
    """True when Fairseq's import_user_module cannot find `path`: it tries the path itself, then relative to
    Fairseq's package and to the folder above it."""
    import importlib.util

    places = [os.path.abspath(path)]
    spec = importlib.util.find_spec("fairseq")
    if spec is not None and spec.origin:
        package = os.path.dirname(spec.origin)
        places += [os.path.join(package, path), os.path.join(package, "..", path)]
    return not any(os.path.exists(p) for p in places)


def user_dir_line(path, option, command):
    return (f"{option} {path}: no such folder; give the folder of an importable plugin package, or leave "
            f"{option} out ({command} loads gpt2_hpu itself)")


def user_dir(cfg):
    """A common.user_dir that does not exist ends in Fairseq's bare `FileNotFoundError: PATH` traceback, from
    inside train.main. (On the command line, Fairseq imports --user-dir before anything else: cli.py checks it
    for gpt2-hpu-train; stock fairseq-train fails before the plugin can load.)"""
    common = _get(cfg, "common")
    path = _get(common, "user_dir") if common is not None else None
    if path and user_dir_missing(str(path)):
        return user_dir_line(path, "common.user_dir", "gpt2-hpu-hydra-train")
    return None


def model_paths(cfg):
    """fairseq-eval-lm, fairseq-validate and the like read `--path` (common_eval.path, several joined by os.pathsep)
    only once the task is set up, and a missing file ends in an OSError traceback."""
    common_eval = _get(cfg, "common_eval")
    path = _get(common_eval, "path") if common_eval is not None else None
    if not path or "://" in str(path):
        return None
    for one in str(path).split(os.pathsep):
        if not os.path.isfile(one):
            return f"--path {_where(one)}: no such checkpoint file; give the .pt file a training run saved"
    return None


_ADDED_BY_FAIRSEQ = {"job_logging_cfg"}  # fairseq_cli.hydra_train stores Hydra's logging config there


def unknown_settings(cfg):
    """Hydra accepts `+some_section.key=1`, and from hydra-core 1.1 `+common.some_typo=1`, without checking the
    key; Fairseq never reads it, and the run goes on without the setting. (Keys of the sections chosen by name,
    model, task, optimizer and the like, Hydra checks against their dataclass itself.)"""
    import dataclasses

    from fairseq.dataclass.configs import FairseqConfig

    fields = FairseqConfig.__dataclass_fields__
    for section in cfg:
        if section not in fields:
            if section in _ADDED_BY_FAIRSEQ:
                continue
            return f"{section} is not a section of Fairseq's configuration: fix its name or remove it"
        schema = fields[section].type
        node = _get(cfg, section)
        if not dataclasses.is_dataclass(schema) or not hasattr(node, "keys"):
            continue
        for key in node.keys():
            if key not in schema.__dataclass_fields__:
                return (f"{section}.{key} is not a setting: fix its name or remove it (gpt2-hpu-train --help "
                        f"lists the settings)")
    return None


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


def compile_mode(cfg):
    """`--compile-mode` is a mode of torch.compile's inductor backend; its CUDA-graph modes need a CUDA device."""
    common = _get(cfg, "common")
    mode = str(_get(common, "compile_mode", "default") or "default") if common is not None else "default"
    if mode == "default":
        return None
    if not (_get(common, "compile", False) or _get(common, "fast_path", False)):
        return f"--compile-mode {mode} is a mode of torch.compile: add --compile (or --fast-path)"
    backend = str(_get(common, "compile_backend", "") or "")
    if _get(common, "hpu", False) or backend not in ("", "inductor"):
        return (f"--compile-mode {mode} is a mode of torch.compile's inductor backend, and this run compiles with "
                f"{backend or 'hpu_backend'}: leave --compile-mode out")
    import torch

    from gpt2_hpu.fast_path import CUDA_GRAPH_MODES

    if mode in CUDA_GRAPH_MODES and (_get(common, "cpu", False) or not torch.cuda.is_available()):
        return (f"--compile-mode {mode} replays CUDA graphs, and this run has no CUDA device: use "
                f"--compile-mode max-autotune-no-cudagraphs, or leave --compile-mode out")
    return None


def undo_implied_tpu(cfg, argv):
    """Fairseq's argparse turns --bf16 into --tpu (its bf16 is its TPU path); with the plugin --bf16 means bf16
    autocast on the training device, so that implied --tpu is dropped unless the command line asked for it."""
    common = cfg.common
    if common.tpu and (common.bf16 or common.memory_efficient_bf16) and "--tpu" not in argv:
        common.tpu = False


def zero_sharding(cfg):
    """`--zero-sharding os` shards the optimizer state across data-parallel ranks: with one rank there is nothing
    to shard (stock Fairseq fails in fairscale). Needs the launch's world size (torchrun and mpirun set it from
    their environment): distributed.call_main runs it once the launch is planned."""
    dt = _get(cfg, "distributed_training")
    if dt is None or str(_get(dt, "zero_sharding", "none")) != "os":
        return None
    common = _get(cfg, "common")
    model_parallel = int(_get(common, "model_parallel_size", 1)) if common is not None else 1
    world = int(_get(dt, "distributed_world_size", 1))
    if world // max(model_parallel, 1) > 1:
        return None
    return ("--zero-sharding os shards the optimizer state across data-parallel ranks, and this run has one: "
            "launch two or more (--distributed-world-size N, torchrun or mpirun), or leave --zero-sharding out")


def command_line(argv):
    """Fairseq's argparse raises a bare ValueError for --fp16 with --tpu, which its --bf16 implies, before
    call_main's checks run: the checks that explain the clash run on the flags of the command line instead."""
    given = {name: "--" + name.replace("_", "-") in argv for name in ("hpu", "cpu", "tpu", "amp")}
    for precision_flag in ("bf16", "fp16"):  # argparse sets --fp16 for --memory-efficient-fp16, and so for bf16
        given[precision_flag] = f"--{precision_flag}" in argv or f"--memory-efficient-{precision_flag}" in argv
    cfg = {"common": given}
    for one in (devices, precision):
        message = one(cfg)
        if message:
            return message
    return None


CHECKS = [unknown_settings, devices, precision, compile_mode, cosine_schedule, language_modeling_data, user_dir,
          model_paths]
TRAINING_CHECKS = [training_splits]


def trains(main):
    """True when `main` is fairseq_cli.train's (also under `python -m fairseq_cli.train`, where it is defined
    again in __main__): the training checks do not apply to evaluation and validation commands."""
    code = getattr(main, "__code__", None)
    train = sys.modules.get("fairseq_cli.train")
    if code is None or train is None:
        return False
    return code.co_name == "main" and code.co_filename == train.main.__code__.co_filename


def check(cfg, training=False):
    """Raises UsageError with the first problem found."""
    for one in CHECKS + (TRAINING_CHECKS if training else []):
        message = one(cfg)
        if message:
            raise UsageError(message)

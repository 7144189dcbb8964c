"""Checkpoint files that survive a kill, the choice of the checkpoint a run resumes from, and what may never be
saved.

Writing (`save`, `copy`; adaptations.safe_checkpoints sends Fairseq's local saves and copies here): the bytes go
to a temporary file beside the target, named `.NAME.partial-HOST-PID` so that no checkpoint name pattern matches
it, which is flushed and fsynced, renamed over the target, and the folder fsynced. At every moment the target
holds the old file or the new one, whole. A temporary file left by a killed writer is removed by the next save
into that folder: at once if it was for the same target (one writer per target), else once its process, on this
host, is gone.

Reading (`choose_restore`): a checkpoint is readable when torch.load opens it (memory-mapped: the archive and
its pickle are read, the tensors are not) and it holds a model. An unreadable `checkpoint_last.pt`, the
default restore file, is replaced by the newest readable checkpoint of the save dir, newest by the update count
stored in it: names carry no update count for epoch or best checkpoints, and copies or restores from a backup
change modification times. Every rank scans the same files in the same order, so every rank picks the same one.
An unreadable file named explicitly, or no readable checkpoint at all, ends the run with one line.

Not saving (`refuse_nonfinite`): a model with NaN or Inf parameters is never written; the run stops in one line
that names the update and the checkpoint a relaunch resumes from.
"""
import logging
import os
import re
import shutil
import socket
import warnings

from gpt2_hpu.data.common import fsync_dir
from gpt2_hpu.errors import CheckpointError, TrainingStopped

logger = logging.getLogger(__name__)

_PARTIAL = re.compile(r"^\.(?P<target>.+)\.partial-(?P<host>.+)-(?P<pid>\d+)$")
# The files Fairseq's save_checkpoint writes; crash.pt is a debugging dump without the data loader's position.
_CHECKPOINT = r"checkpoint(?:\d+|_\d+_\d+|_best|\.best_.+|_last){suffix}\.pt"
_RELAUNCH = "relaunch to resume from it, e.g. with a lower --lr or with --clip-norm"


# --- writing ---------------------------------------------------------------------------------------------------
def is_local(path):
    # Fairseq's PathManager hands every path with a scheme (s3://, manifold://, https://) to iopath.
    return "://" not in str(path)


def save(obj, path):
    """torch.save(obj) to `path`, atomically and durably."""
    import torch

    def fill(temp):
        with open(temp, "wb") as f:
            torch.save(obj, f)

    _replace(path, fill)


def copy(src, dst):
    """A copy of `src` at `dst`, atomically and durably."""
    _replace(dst, lambda temp: shutil.copyfile(src, temp))
    return True


def _replace(target, fill):
    folder, name = os.path.split(os.path.abspath(target))
    remove_stale_partials(folder, name)
    temp = os.path.join(folder, partial_name(name))
    try:
        fill(temp)
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        _remove(temp)
        raise
    fsync_dir(folder)


def partial_name(target_name, host=None, pid=None):
    return f".{target_name}.partial-{host or socket.gethostname()}-{pid or os.getpid()}"


def remove_stale_partials(folder, target_name):
    host = socket.gethostname()
    for name in os.listdir(folder):
        m = _PARTIAL.match(name)
        if m and (m.group("target") == target_name or (m.group("host") == host and not _alive(int(m.group("pid"))))):
            _remove(os.path.join(folder, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --- reading ---------------------------------------------------------------------------------------------------
class Unreadable(Exception):
    """str() completes "FILE ..." with what is wrong with it."""


class Probe:
    def __init__(self, path, state):
        self.path = path
        self.state = state
        history = state.get("optimizer_history") or [{}]
        self.updates = history[-1].get("num_updates") if isinstance(history[-1], dict) else None


def probe(path):
    """Opens a checkpoint as Fairseq will (torch.load to the CPU, torch's default weights_only), tensors mapped
    rather than read. Raises Unreadable."""
    import torch

    size = os.path.getsize(path)
    if size == 0:
        raise Unreadable("is empty (0 bytes)")
    with open(path, "rb") as f:
        zip_archive = f.read(4) == b"PK\x03\x04"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's weights_only notice: Fairseq's load repeats it
            try:
                state = torch.load(path, map_location="cpu", mmap=zip_archive)
            except Exception:
                if not zip_archive:
                    raise
                # mapping a damaged archive fails with a bare OSError; reading it says what is wrong
                state = torch.load(path, map_location="cpu")
    except Exception as e:
        detail = " ".join(str(e).split()).split(". ")[0].rstrip(".") or type(e).__name__
        if len(detail) > 120:
            detail = detail[:117] + "..."
        raise Unreadable(f"is truncated or corrupt ({size} bytes; torch.load: {detail})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise Unreadable("is not a Fairseq checkpoint (it holds no model)")
    return Probe(path, state)


def newest_readable(save_dir, suffix="", exclude=()):
    """The readable checkpoint of `save_dir` with the highest stored update count (ties: the first name), or None."""
    pattern = re.compile(_CHECKPOINT.format(suffix=re.escape(suffix)))
    excluded = {os.path.abspath(p) for p in exclude}
    best = None
    for name in sorted(os.listdir(save_dir)) if os.path.isdir(save_dir) else []:
        path = os.path.join(save_dir, name)
        if not pattern.fullmatch(name) or os.path.abspath(path) in excluded or not os.path.isfile(path):
            continue
        try:
            found = probe(path)
        except Unreadable:
            continue
        if found.updates is not None and (best is None or found.updates > best.updates):
            best = found
    return best


def choose_restore(filename, checkpoint_cfg, suffix="", option=None, announce=True):
    """The checkpoint to load for Fairseq's trainer.load_checkpoint(filename): (path, Probe), or (filename, None)
    where Fairseq finds nothing to load (or the path is not local) and so starts from scratch.

    `option` names the command-line option that gave an explicit filename (for the message)."""
    if not is_local(filename):
        return filename, None
    save_dir = checkpoint_cfg.save_dir
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    default = checkpoint_cfg.restore_file == "checkpoint_last.pt" and \
        os.path.abspath(filename) == os.path.abspath(last)
    if os.path.isfile(filename):
        try:
            return filename, probe(filename)
        except Unreadable as e:
            if not default:
                raise CheckpointError(f"{option or 'the checkpoint'} {filename} {e}: give a complete checkpoint "
                                      f"file") from None
            problem = str(e)
    elif default and _interrupted(filename):
        problem = "is missing (its last write was interrupted)"
    else:
        return filename, None
    found = newest_readable(save_dir, suffix, exclude=[filename])
    if found is None:
        if not os.path.exists(filename):
            return filename, None
        raise CheckpointError(f"{filename} {problem}, and no other checkpoint in {save_dir} can be read: move it "
                              f"away to train from scratch, or give a good checkpoint with --restore-file")
    (logger.warning if announce else logger.info)(
        f"{filename} {problem}; resuming from {found.path} (update {found.updates}), the newest readable "
        f"checkpoint in {save_dir}")
    return found.path, found


def _interrupted(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.isdir(folder) and any((m := _PARTIAL.match(n)) and m.group("target") == name
                                         for n in os.listdir(folder))


def resume_point(save_dir, suffix=""):
    """What a relaunch resumes from: checkpoint_last if readable, else the newest readable checkpoint; or None."""
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    if os.path.isfile(last):
        try:
            found = probe(last)
            if found.updates is not None:
                return found
        except Unreadable:
            pass
    return newest_readable(save_dir, suffix, exclude=[last])


def _resume_hint(save_dir, suffix):
    found = resume_point(save_dir, suffix) if save_dir and os.path.isdir(save_dir) else None
    if found is None:
        return "no checkpoint had been saved before it"
    return f"the last checkpoint is {found.path} (update {found.updates}): {_RELAUNCH}"


# --- what a checkpoint must match ---------------------------------------------------------------------------------
def vocabulary_mismatch(checkpoint_model, model_shapes, vocab_sizes):
    """(key, checkpoint rows, model rows) of the first tensor whose rows are the model's vocabulary and whose
    row count differs in the checkpoint, the other dimensions being equal; None if the vocabularies agree."""
    for key, shape in model_shapes.items():
        saved = checkpoint_model.get(key)
        if saved is None or not shape or shape[0] not in vocab_sizes:
            continue
        saved_shape = tuple(saved.shape)
        if saved_shape and saved_shape[0] != shape[0] and saved_shape[1:] == tuple(shape[1:]):
            return key, saved_shape[0], shape[0]
    return None


def check_vocabulary(found, model, task):
    dictionaries = [getattr(task, name, None) for name in ("source_dictionary", "target_dictionary")]
    sizes = {len(d) for d in dictionaries if d is not None}
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    mismatch = vocabulary_mismatch(found.state["model"], shapes, sizes)
    if mismatch is None:
        return
    key, saved_rows, rows = mismatch
    raise CheckpointError(
        f"{_dictionary_file(task)} does not match checkpoint {found.path}: the dictionary has {rows} symbols, the "
        f"checkpoint's {key} has {saved_rows}: train on data binarized with the checkpoint's dict.txt, or train from "
        f"scratch (another --save-dir, no --restore-file)")


def _dictionary_file(task):
    # language_modeling is a legacy task: its settings are task.args, not task.cfg
    settings = getattr(task, "cfg", None) or getattr(task, "args", None)
    data = getattr(settings, "data", None)
    if not data:
        return "the task's dictionary"
    return os.path.join(str(data).split(os.pathsep)[0], "dict.txt")


# --- what may never be saved ----------------------------------------------------------------------------------------
def nonfinite_parameters(module):
    """Names of the parameters holding NaN or Inf (one read of the device for the whole model)."""
    import torch

    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).cpu().tolist()
    return [n for (n, _), ok in zip(named, finite) if not ok]


def refuse_nonfinite(module, filename, update, save_dir, suffix=""):
    bad = nonfinite_parameters(module)
    if not bad:
        return
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise TrainingStopped(f"refusing to save {filename} at update {update}: the model's parameters hold NaN or Inf "
                          f"({shown}); {_resume_hint(save_dir, suffix)}")


def training_stopped(error, update, save_dir, suffix="", detector_ran=True):
    """Fairseq's FloatingPointError (non-finite loss or gradients, or fp16's minimum loss scale) as one line."""
    reason = (str(error).strip().splitlines() or ["not finite"])[0].rstrip(". ")
    where = "FloatingPointError; Fairseq's NanDetector lines above name where" if detector_ran else "not finite"
    return TrainingStopped(f"training stopped at update {update}: {reason} ({where}); "
                           f"{_resume_hint(save_dir, suffix)}")

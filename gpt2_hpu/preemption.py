"""Preemption: SIGTERM or SIGINT ends training at the next update boundary, with a checkpoint and exit status 0.

A cluster preempts a job with SIGTERM (and SIGKILL after a grace period); Ctrl-C sends SIGINT to the whole
process group. Each training process only notes the signal (`install`). At every update boundary the ranks
agree whether any of them got one (`agreed_signal`: one tiny gloo all_reduce per update, only with several
ranks), so all of them stop after the same update (`stopping`): the checkpoint is saved through Fairseq's own
save_checkpoint, validation is skipped, and Fairseq's training loop ends as it does at --max-update. The next
launch of the same command resumes from checkpoint_last.pt. Further signals while stopping are ignored; SIGKILL
stops at once. The one-host launcher forwards the signals it gets to its ranks (launcher.py).
"""
import functools
import logging
import math
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The same signal again this soon is one delivery arriving twice (Ctrl-C reaches both the launcher, which
# forwards it, and the ranks): ignored without a word.
_DUPLICATE_WINDOW_S = 1.0

_owner = None  # the process that installed the handlers; processes forked from it (data loader workers) inherit
_received = None  # the first signal's number
_last_seen = {}  # signal number -> when it last arrived


def install():
    """Note SIGTERM and SIGINT in this process instead of dying of them. Installed before Fairseq forks its data
    loader workers, so that they inherit it and live through a Ctrl-C too (their rank stops them)."""
    global _owner
    if _owner == os.getpid() or threading.current_thread() is not threading.main_thread():
        return  # installed already, or not possible: Python only takes signal handlers in the main thread
    for signum in SIGNALS:
        signal.signal(signum, _note)
    _owner = os.getpid()
    # Spawned ranks start with them blocked (launcher.py): one that came during start-up is taken now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _note(signum, frame):
    global _received
    if os.getpid() != _owner:
        return  # a forked worker: its rank decides
    now = time.monotonic()
    if _received is None:
        _received = signum
    elif now - _last_seen.get(signum, -math.inf) > _DUPLICATE_WINDOW_S:
        # A raw write: a handler that logs could re-enter a print the main thread is in the middle of.
        os.write(2, f"gpt2-hpu: {signal.Signals(signum).name} received while stopping: ignored, training stops at "
                    f"the next update boundary (SIGKILL stops it at once)\n".encode())
    _last_seen[signum] = now


def agreed_signal(trainer):
    """The name of the signal that stops training after this update, the same on every rank; None to go on."""
    signum = _received or 0
    world_size = trainer.data_parallel_world_size
    if world_size > 1:
        import torch

        flag = torch.tensor([signum], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=trainer.host_group())
        signum = int(flag.item())
    return signal.Signals(signum).name if signum else None


def stopping(validate_and_save):
    """fairseq_cli.train's validate_and_save, run after every update, that first asks whether to stop."""
    @functools.wraps(validate_and_save)
    def checked(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch, *args, **kwargs):
        name = agreed_signal(trainer)
        if name is None:
            return validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch, *args, **kwargs)
        if trainer.get_num_updates() >= (cfg.optimization.max_update or math.inf):
            # The last update anyway: Fairseq's own ending, with its validation.
            result = validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch, *args, **kwargs)
            logger.warning(f"{name} received at the last update: training ended as usual")
            return result
        return stop(cfg, trainer, task, epoch_itr, name)

    return checked


def stop(cfg, trainer, task, epoch_itr, name):
    """Saves the checkpoint (unless --no-save) and returns validate_and_save's answer for "stop": no validation."""
    from fairseq import checkpoint_utils

    updates = trainer.get_num_updates()
    checkpoint = cfg.checkpoint
    last = os.path.join(checkpoint.save_dir, f"checkpoint_last{trainer.checkpoint_suffix}.pt")
    if checkpoint.no_save:
        message = f"{name} received: stopped at update {updates} without a checkpoint (--no-save)"
    else:
        # The next launch resumes from checkpoint_last.pt: it is written even under --no-last-checkpoints.
        no_last = checkpoint.no_last_checkpoints
        checkpoint.no_last_checkpoints = False
        try:
            saved = checkpoint_utils.save_checkpoint(checkpoint, trainer, epoch_itr, None)
        finally:
            checkpoint.no_last_checkpoints = no_last
        if saved is not None and hasattr(task, "post_save"):  # later Fairseq's validate_and_save does the same
            task.post_save(saved, updates)
        if trainer.data_parallel_world_size > 1:
            import torch

            torch.distributed.barrier(group=trainer.host_group())  # no rank reports the save before it is done
        if checkpoint.restore_file == "checkpoint_last.pt":
            resume = "run the same command to resume"
        else:
            resume = f"resume with --restore-file {last}"
        message = f"{name} received: saved {last} at update {updates}; {resume}"
    if trainer.data_parallel_world_size > 1:
        message += f" (rank {trainer.data_parallel_rank} of {trainer.data_parallel_world_size})"
    # A warning: Fairseq keeps ranks other than 0 at that level.
    logger.warning(message)
    return [None], True

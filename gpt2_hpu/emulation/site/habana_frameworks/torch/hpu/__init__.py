"""Emulated `habana_frameworks.torch.hpu` (also `torch.hpu` once core is imported).

One emulated card per process, like a real Gaudi process: `current_device()` is 0, and the number of
cards on the "host" is GPT2_HPU_EMULATE. As on a Gaudi, the first use of the device (init, the device name,
the current device, memory statistics, a tensor on the device) acquires a card for the rest of the process's
life, and a card another process holds cannot be acquired. The emulated host's cards are lock files in the
folder GPT2_HPU_EMULATE_POOL, which the first process to load the bridge creates and its children inherit.
"""
import fcntl
import os
import tempfile
import warnings

import torch

from . import memory, metrics, random  # noqa: F401
from .memory import *  # noqa: F401,F403
from .random import *  # noqa: F401,F403
from .streams import *  # noqa: F401,F403

_initialized = False
POOL_ENV = "GPT2_HPU_EMULATE_POOL"
_held_card = None  # (index, open lock file) while this process holds a card


def _card_pool():
    pool = os.environ.get(POOL_ENV)
    if not pool:
        pool = os.environ[POOL_ENV] = tempfile.mkdtemp(prefix="gpt2-hpu-emulated-cards-")
    return pool


def _acquire():
    global _held_card
    if _held_card is not None:
        return
    pool = _card_pool()
    module = os.environ.get("HLS_MODULE_ID")
    candidates = [int(module)] if module else list(range(device_count()))
    for index in candidates:
        lock = open(os.path.join(pool, f"card{index}.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _held_card = (index, lock)
        return
    which = f"card {module} (HLS_MODULE_ID)" if module else f"all {device_count()} cards"
    raise RuntimeError(f"synStatus=26 [Device already acquired] Device acquire failed: {which} held by other "
                       "processes (emulated)")


def _emulated_count():
    try:
        return max(0, int(os.environ.get("GPT2_HPU_EMULATE", "0") or 0))
    except ValueError:
        return 0


def device_count():
    if not hasattr(device_count, "_count"):  # cached, as in SynapseAI 1.19
        device_count._count = _emulated_count()
    return device_count._count


def is_available():
    return device_count() > 0


def init():
    global _initialized
    _acquire()
    _initialized = True


def is_initialized():
    return _initialized


def _get_device_index(device=None):
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "hpu":
            raise ValueError(f"Expected a hpu device, but got: {device}")
        return device.index or 0
    raise ValueError(f"Expected a hpu device, but got: {device}")


def current_device():
    init()
    return 0


def set_device(device):
    index = _get_device_index(device)
    if index != 0 and "HLS_MODULE_ID" not in os.environ and "HABANA_VISIBLE_MODULES" not in os.environ \
            and device_count() < 8:
        raise AssertionError("As HABANA_VISIBLE_MODULES is not provided, the only supported device idx is 0.")
    if "HLS_MODULE_ID" not in os.environ:
        os.environ["HLS_MODULE_ID"] = str(index)
    set_device.current_device_idx = index


def get_device_name(device=None):
    if not is_available():
        warnings.warn("Device not available", stacklevel=2)
        return ""
    if _get_device_index(device) >= max(1, device_count()):
        raise AssertionError("Invalid device id")
    init()  # the bridge's _lazy_init: asking the name acquires the card
    return "GAUDI2"


def synchronize():
    # Lazy mode: flushing the pending graph is part of a device synchronize.
    from habana_frameworks.torch.utils.internal import is_lazy
    if is_lazy():
        from habana_frameworks.torch.core.step_closure import mark_step
        mark_step()


def is_bf16_supported():
    return is_available()


_card_pool()  # now, so that processes started from here share this emulated host's cards

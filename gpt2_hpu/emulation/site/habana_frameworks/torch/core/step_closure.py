"""Emulated `mark_step`: in lazy mode it ends the accumulated graph and runs the step closures."""
from habana_frameworks.torch.utils.internal import lazy_only

# What the emulated device has executed; the real bridge keeps no such counter (tests read it).
emulator_stats = {"mark_step": 0}
_closures = []


@lazy_only
def mark_step(device_str="", sync=False):
    emulator_stats["mark_step"] += 1
    pending = list(_closures)
    _closures.clear()
    for closure, args in pending:
        closure(*args)


@lazy_only
def iter_mark_step(device_str=""):
    mark_step(device_str)


@lazy_only
def add_step_closure(closure, args=()):
    _closures.append((closure, args))


def _mark_step_if_lazy(device_str=""):
    mark_step(device_str)

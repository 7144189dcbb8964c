"""Emulated HPU memory statistics: the emulated card's memory is this process's resident host memory."""
import os
import resource

__all__ = ["memory_stats", "memory_allocated", "max_memory_allocated", "memory_reserved",
           "max_memory_reserved", "mem_get_info", "memory_summary", "memory_usage",
           "reset_peak_memory_stats", "reset_accumulated_memory_stats"]

_peak_since_reset = [None]  # None: the process's lifetime peak (ru_maxrss)
_counters = {"NumAllocs": 0, "NumFrees": 0, "TotalSystemAllocs": 0, "TotalSystemFrees": 0}


def _check(device):
    from habana_frameworks.torch import hpu
    hpu.init()
    index = hpu._get_device_index(device)
    if index != 0:
        raise AssertionError("Invalid device id")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _limit_bytes():
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_stats(device=None):
    _check(device)
    in_use = _rss_bytes()
    if _peak_since_reset[0] is None:
        max_in_use = max(in_use, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    else:
        _peak_since_reset[0] = max_in_use = max(_peak_since_reset[0], in_use)
    return {
        "Limit": _limit_bytes(),
        "InUse": in_use,
        "MaxInUse": max_in_use,
        "NumAllocs": _counters["NumAllocs"],
        "NumFrees": _counters["NumFrees"],
        "ActiveAllocs": _counters["NumAllocs"] - _counters["NumFrees"],
        "MaxAllocSize": 0,
        "TotalSystemAllocs": _counters["TotalSystemAllocs"],
        "TotalSystemFrees": _counters["TotalSystemFrees"],
        "TotalActiveAllocs": _counters["TotalSystemAllocs"] - _counters["TotalSystemFrees"],
    }


def memory_allocated(device=None):
    return memory_stats(device)["InUse"]


def max_memory_allocated(device=None):
    return memory_stats(device)["MaxInUse"]


def memory_reserved(device=None):
    return memory_stats(device)["Limit"]


def max_memory_reserved(device=None):
    return memory_stats(device)["Limit"]


def mem_get_info(device=None):
    stats = memory_stats(device)
    return stats["Limit"] - stats["InUse"], stats["Limit"]


def memory_usage(device=None):
    return memory_stats(device)["InUse"]


def memory_summary(device=None):
    return "\n".join(f"{k}: {v}" for k, v in memory_stats(device).items())


def reset_peak_memory_stats(device=None):
    _check(device)
    _peak_since_reset[0] = _rss_bytes()


def reset_accumulated_memory_stats(device=None):
    _check(device)
    for key in _counters:
        _counters[key] = 0

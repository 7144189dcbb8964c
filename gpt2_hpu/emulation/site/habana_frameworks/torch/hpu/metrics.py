"""Emulated HPU metrics: the registered global metrics exist and report zero compilations."""
import contextlib

__all__ = ["metric_global", "metric_localcontext", "metrics_dump", "MetricNotFound"]


class MetricNotFound(Exception):
    pass


class _Metric:
    def __init__(self, name, empty_stats):
        self.name = name
        self._empty = empty_stats

    def stats(self):
        return [tuple(item) for item in self._empty]

    def reset(self):
        pass

    def start(self):
        pass

    def stop(self):
        pass


_GLOBAL = {
    "graph_compilation": _Metric("graph_compilation", [("TotalNumber", 0), ("TotalTime", 0), ("AvgTime", 0)]),
    "cpu_fallback": _Metric("cpu_fallback", [("TotalNumber", 0), ("FallbackOps", {})]),
    "memory_defragmentation": _Metric("memory_defragmentation",
                                      [("TotalNumber", 0), ("TotalSuccessful", 0), ("AvgTime", 0), ("MaxTime", 0)]),
}


def metric_global(name):
    return _GLOBAL.get(name)


@contextlib.contextmanager
def metric_localcontext(name):
    if name not in _GLOBAL:
        raise MetricNotFound(name)
    yield _Metric(name, _GLOBAL[name].stats())


def metrics_dump(file_name, format="json"):
    import json
    with open(file_name, "w") as f:
        json.dump({name: dict(m.stats()) for name, m in _GLOBAL.items()}, f)

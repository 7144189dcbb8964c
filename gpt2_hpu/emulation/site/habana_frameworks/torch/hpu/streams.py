"""Emulated `torch.hpu.Stream` and `torch.hpu.Event`: the emulated device runs every op at once, in order, so
a stream has nothing pending and an event is complete when recorded. (torch.compile looks these classes up on
every registered device module.)"""
import time

__all__ = ["Stream", "Event", "current_stream", "default_stream"]


class Stream:
    def __init__(self, device=None, priority=0, **kwargs):
        self.device = device
        self.priority = priority

    def query(self):
        return True

    def synchronize(self):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        event = event or Event()
        event.record(self)
        return event


class Event:
    def __init__(self, enable_timing=False, **kwargs):
        self.enable_timing = enable_timing
        self._time = None

    def record(self, stream=None):
        self._time = time.perf_counter()

    def query(self):
        return True

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def elapsed_time(self, end_event):
        return (end_event._time - self._time) * 1000.0


_default = Stream()


def current_stream(device=None):
    return _default


def default_stream(device=None):
    return _default

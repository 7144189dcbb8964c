"""Fairseq's finite-gradient check one update late, where the optimizer can skip a step on the device.

Fairseq reads every update's gradient norm back to the host (`torch.isfinite(grad_norm)`) before the optimizer
step, to stop on NaN or Inf. That read waits for the update's last backward, and the device then idles until
the host has stepped the optimizer, done Fairseq's bookkeeping and launched the next update's first kernels.
Outside logging steps it is the one device read left in an update.

Where the optimizer can skip a step on the device (`--optimizer fused_adamw` on torch's fused kernels), the
check moves by one update:
- an update's norm decides on the device whether its step is applied: a NaN or Inf norm leaves parameters and
  moments as they were;
- the host reads that norm during the next update, once the next update's micro-batches are queued. On CUDA
  the norm is copied to pinned host memory right behind its own kernel, and the read waits for that copy only
  (`.item()` would wait for everything queued on the stream since), so the device keeps the next update's
  work while the host goes on;
- where a late answer would matter, the host reads the norm at once (`settle`): at the updates whose speed
  the log reports (logging steps, the end of warm-up), at the last update, and before validation, a
  checkpoint (on every rank, where Fairseq consolidates the optimizer) or the next epoch's learning rate.

When a norm read late is not finite, the trainer takes its update back on the host (update count, learning
rate, the optimizer's host step count) and replays it through Fairseq's own step, which meets the norm and
stops as it always does (crash.pt, its NanDetector, FloatingPointError).
"""
import math
from dataclasses import dataclass
from typing import Any

import torch


class _OnItsWay:
    """A norm on its way to the host: read later, waiting only for its own copy."""

    def __init__(self, norm):
        self._norm = norm
        self._copied = None
        if norm.is_cuda:
            self._host = torch.empty(norm.shape, dtype=norm.dtype, pin_memory=True)
            self._host.copy_(norm, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()

    def value(self):
        if self._copied is None:
            return self._norm.item()
        self._copied.synchronize()
        return self._host.item()


@dataclass
class Pending:
    """An update whose norm the host has not read yet."""

    update: int  # its number, counting from 1
    norm: _OnItsWay
    samples: Any  # its batches as Fairseq got them, to replay it


class NonFiniteUpdate(Exception):
    """An update's gradient norm was NaN or Inf; its step was skipped on the device. Not a FloatingPointError:
    raised while a later update runs, Fairseq's handler would rerun the wrong batches."""

    def __init__(self, pending, value):
        super().__init__(f"update {pending.update}: gradient norm {value}")
        self.pending = pending
        self.value = value


class DeferredCheck:
    def __init__(self, skip):
        self._skip = skip  # fused_adamw.device_skip(...)
        self._pending = None
        self.norm = None  # the norm of the update being stepped, for the log

    def hold(self, update, norm, samples):
        """Called with an update's norm, before its step: the step is skipped on the device if the norm is not
        finite, and the norm of the update before is read (NonFiniteUpdate if it was not finite). Returns a
        finite host number for Fairseq's own check, which this one replaces."""
        previous, self._pending = self._pending, None
        if previous is not None:
            self._read(previous)
        self._skip.skip_next_step_where((~torch.isfinite(norm)).to(torch.float32))
        self._pending = Pending(update, _OnItsWay(norm.detach()), samples)
        self.norm = norm
        return torch.zeros(())

    def settle(self):
        """Reads the norm not read yet, now (NonFiniteUpdate if it was not finite)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._read(pending)

    def take_back(self):
        """Takes back the host step count of the update NonFiniteUpdate named (the optimizer's last step, which
        the device skipped)."""
        self._skip.uncount_last_step()

    def _read(self, pending):
        value = pending.norm.value()
        if not math.isfinite(value):
            raise NonFiniteUpdate(pending, value)

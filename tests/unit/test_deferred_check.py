"""The finite-gradient check one update late (gpt2_hpu/deferred_check.py): which norm is read when, what each
step is told, and what a NaN gives."""
import math

import pytest
import torch
from kernel_helpers import HostReads

from gpt2_hpu.deferred_check import DeferredCheck, NonFiniteUpdate


class _Skip:
    def __init__(self):
        self._flags = []
        self.uncounted = 0

    @property
    def flags(self):
        return [float(f) for f in self._flags]

    def skip_next_step_where(self, flag):
        self._flags.append(flag)

    def uncount_last_step(self):
        self.uncounted += 1


def _norms(*values):
    return [torch.tensor(v, dtype=torch.float32) for v in values]


def _which(reads, norms):
    where = {n.untyped_storage().data_ptr(): i + 1 for i, n in enumerate(norms)}
    return [where.get(ptr) for ptr in reads.storages]


def test_each_update_reads_the_norm_of_the_one_before_and_settle_reads_the_last():
    skip, norms = _Skip(), _norms(2.0, 3.0, 0.5)
    check = DeferredCheck(skip)
    reads = []
    for update, norm in enumerate(norms, start=1):
        with HostReads() as r:
            stand_in = check.hold(update, norm, samples=[f"batch {update}"])
        reads.append(_which(r, norms))
        assert stand_in.device.type == "cpu" and float(stand_in) == 0.0  # Fairseq's own check reads no device
        assert check.norm is norm
    with HostReads() as r:
        check.settle()
    assert reads + [_which(r, norms)] == [[], [1], [2], [3]]
    assert skip.flags == [0.0, 0.0, 0.0]
    with HostReads() as r:
        check.settle()  # nothing left to read
    assert r.storages == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_norm_skips_its_step_and_is_named_while_the_next_update_runs(bad):
    skip, norms = _Skip(), _norms(2.0, bad, 1.0)
    check = DeferredCheck(skip)
    check.hold(1, norms[0], samples=["batch 1"])
    check.hold(2, norms[1], samples=["batch 2"])
    assert skip.flags == [0.0, 1.0]  # update 2's step is skipped on the device
    with pytest.raises(NonFiniteUpdate) as raised:
        check.hold(3, norms[2], samples=["batch 3"])
    assert raised.value.pending.update == 2 and raised.value.pending.samples == ["batch 2"]
    assert math.isnan(raised.value.value) if math.isnan(bad) else raised.value.value == bad
    assert skip.flags == [0.0, 1.0]  # nothing asked of update 3's step: the run stops before it
    check.take_back()
    assert skip.uncounted == 1
    with HostReads() as r:
        check.settle()
    assert r.storages == []  # update 2's norm, read once, is not left pending


def test_settle_names_a_non_finite_norm_at_once():
    skip, norms = _Skip(), _norms(float("nan"))
    check = DeferredCheck(skip)
    check.hold(1, norms[0], samples=["batch 1"])
    with pytest.raises(NonFiniteUpdate) as raised:
        check.settle()
    assert raised.value.pending.update == 1

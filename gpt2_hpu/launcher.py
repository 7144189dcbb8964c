"""The one-host launcher: `--distributed-world-size N` processes spawned here, watched until they all end.

- SIGTERM and SIGINT that reach the launcher are forwarded to every rank (a scheduler's `kill <pid>` reaches only
  the launcher), which then stop at the next update boundary with a checkpoint (preemption.py); the launcher
  waits for them and exits 0 when every rank did. A Ctrl-C reaches the ranks twice, directly and forwarded: the
  ranks take it once.
- A `Gpt2HpuError` in a rank reaches the user as its one line and exit status, not as torch.multiprocessing's
  traceback of the rank; other failures keep torch's report.
- Once a rank has failed, the others get a few seconds to end on their own (they usually meet the same error),
  then are killed: waiting for a dead peer in a collective, they would hang.
"""
import json
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import sys
import tempfile
import threading
import time

import torch

from gpt2_hpu import preemption
from gpt2_hpu.errors import Gpt2HpuError

GRACE_AFTER_FAILURE_S = 10.0


def spawn(rank_main, args, nprocs):
    """Runs `rank_main(index, *args)` in `nprocs` spawned processes; returns when all of them exited 0."""
    with tempfile.TemporaryDirectory(prefix="gpt2-hpu-ranks-") as reports, _Forwarding() as forwarding:
        # The ranks start with SIGTERM and SIGINT blocked (a signal mask survives fork and exec), and unblock
        # them once they take them (preemption.install): one that arrives while a rank starts up waits for it.
        # Multiprocessing's resource tracker unblocks both in this process when it starts: it starts first.
        multiprocessing.resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, preemption.SIGNALS)
        try:
            context = torch.multiprocessing.spawn(fn=_rank, args=(rank_main, args, reports), nprocs=nprocs,
                                                  join=False)
            forwarding.to(context.pids())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        first_failed = _wait(context.processes, forwarding)
        if first_failed is None:
            return
        _exit_with_reported_errors(reports, nprocs)
    # Torch's own report of that rank (its traceback, or the signal that ended it).
    for sentinel, index in list(context.sentinels.items()):
        if index != first_failed:
            del context.sentinels[sentinel]
    context.join()


def _rank(index, rank_main, args, reports):
    preemption.install()
    try:
        rank_main(index, *args)
    except Gpt2HpuError as e:
        with open(os.path.join(reports, f"{index}.json"), "w") as f:
            json.dump({"line": e.line(), "exit_code": e.exit_code}, f)
        raise SystemExit(e.exit_code) from None


def _exit_with_reported_errors(reports, nprocs):
    lines, exit_code = [], None
    for index in range(nprocs):
        path = os.path.join(reports, f"{index}.json")
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
            if report["line"] not in lines:
                lines.append(report["line"])
            exit_code = report["exit_code"] if exit_code is None else exit_code
    if lines:
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(exit_code)


def _wait(processes, forwarding):
    """Waits for every process; returns the index of the first one that failed, or None."""
    running = {process.sentinel: index for index, process in enumerate(processes)}
    first_failed, deadline = None, None
    while running:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(running), timeout)
        for sentinel in ready:
            index = running.pop(sentinel)
            processes[index].join()
            forwarding.forget(processes[index].pid)
            if processes[index].exitcode != 0 and first_failed is None:
                first_failed, deadline = index, time.monotonic() + GRACE_AFTER_FAILURE_S
        if not ready and deadline is not None:
            for index in running.values():
                processes[index].kill()
            deadline = None
    return first_failed


class _Forwarding:
    """While active, SIGTERM and SIGINT go on to the ranks (those that arrive before they exist, once they do)."""

    def __init__(self):
        self._pids, self._pending, self._previous = [], [], {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only takes signal handlers there
        for signum in preemption.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._forward)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def to(self, pids):
        self._pids = list(pids)
        while self._pending:
            self._send(self._pending.pop(0))

    def forget(self, pid):
        # Once reaped, a pid may be reused by an unrelated process.
        self._pids = [p for p in self._pids if p != pid]

    def _forward(self, signum, frame):
        if self._pids:
            self._send(signum)
        else:
            self._pending.append(signum)

    def _send(self, signum):
        for pid in list(self._pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

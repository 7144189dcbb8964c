"""Preemption by real signals on real runs (emulated HPUs): SIGTERM or SIGINT saves a checkpoint at the next update
boundary and ends the run with status 0 and a message on every rank, and the next launch of the same command
resumes from it. These runs log to TensorBoard, and end without a traceback. A rank's one-line error reaches the
user as that line."""
import os
import re
import signal
import subprocess
import threading
import time

import torch

from helpers import BIN, PACKAGE_DIR, TINY_MODEL, emulation_env, log_records

# "(rank R of W)" only with several ranks.
MESSAGE = re.compile(r"(SIGTERM|SIGINT) received: saved (\S+) at update (\d+); run the same command to resume"
                     r"(?: \(rank (\d+) of (\d+)\))?$")


def _command(data, tmp_path, world_size, *extra):
    # TINY_MODEL keeps --no-last-checkpoints: a preempted run writes checkpoint_last.pt all the same.
    return [BIN / "fairseq-train", data, "--user-dir", PACKAGE_DIR, "--hpu", *TINY_MODEL,
            "--distributed-world-size", str(world_size), "--max-update", "100000", "--num-workers", "1",
            "--save-dir", tmp_path / "ckpt", "--tensorboard-logdir", tmp_path / "tb", *extra]


class _Run:
    """A training run in its own process group, its output read as it comes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([str(a) for a in args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines, self.updated = [], threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "train_inner" in line:
                self.updated.set()
        self.updated.set()

    @property
    def output(self):
        return "".join(self.lines)

    def signal_after_first_update(self, signum, whole_group):
        """Sends `signum` once an update is logged (to the launcher, or like Ctrl-C to its whole process group);
        returns that first update's number."""
        try:
            assert self.updated.wait(300) and self.proc.poll() is None, self.output[-3000:]
            first = int(log_records(self.output, "train_inner")[0]["num_updates"])
            if whole_group:
                os.killpg(self.proc.pid, signum)
            else:
                os.kill(self.proc.pid, signum)
            self.proc.wait(timeout=300)
            self.reader.join(timeout=30)
            return first
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _stopped(run, signum, world_size, save_dir):
    """Checks how a signalled run ended; returns the update its checkpoint holds."""
    out = run.output
    assert run.proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    found = [m.groups() for m in map(MESSAGE.search, out.splitlines()) if m]
    ranks = [(None, None)] if world_size == 1 else [(str(r), str(world_size)) for r in range(world_size)]
    assert sorted(g[3:] for g in found) == ranks, out[-4000:]  # one line from each rank
    names, paths, updates = {g[0] for g in found}, {g[1] for g in found}, {int(g[2]) for g in found}
    assert names == {signal.Signals(signum).name} and paths == {str(save_dir / "checkpoint_last.pt")}
    (saved,) = updates  # all ranks stopped after the same update
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == saved
    return saved


def _events_written(tb_dir):
    events = list(tb_dir.glob("*/events.out.tfevents.*"))
    assert events and all(b"loss" in path.read_bytes() for path in events), events


def _preempt_and_resume(data, tmp_path, world_size, first_signal, second_signal):
    args, env = _command(data, tmp_path, world_size), emulation_env(world_size, "lazy")
    save_dir = tmp_path / "ckpt"

    run = _Run(args, env)
    first_logged = run.signal_after_first_update(*first_signal)
    saved = _stopped(run, first_signal[0], world_size, save_dir)
    assert saved >= first_logged

    # The same command again: it continues from the saved update, and stops the same way.
    again = _Run(args, env)
    assert again.signal_after_first_update(*second_signal) == saved + 1
    assert _stopped(again, second_signal[0], world_size, save_dir) > saved
    _events_written(tmp_path / "tb")


def test_one_rank_ctrl_c_then_sigterm(tiny_data, tmp_path):
    """Ctrl-C reaches the whole process group, the data loader worker too (--num-workers 1)."""
    _preempt_and_resume(tiny_data, tmp_path, 1, (signal.SIGINT, True), (signal.SIGTERM, False))


def test_two_ranks_sigterm_to_the_launcher_then_ctrl_c(tiny_data, tmp_path):
    """A scheduler's `kill <pid>` reaches only the launcher, which forwards it; Ctrl-C reaches every process, the
    ranks twice (directly and forwarded)."""
    _preempt_and_resume(tiny_data, tmp_path, 2, (signal.SIGTERM, False), (signal.SIGINT, True))


def test_an_error_in_spawned_ranks_is_its_one_line(tiny_data, tmp_path):
    """The trainer finds --compile wrong only once it knows the HPU runs in lazy mode: inside each spawned rank."""
    args = _command(tiny_data, tmp_path, 2, "--compile")
    proc = subprocess.Popen([str(a) for a in args], env=emulation_env(2, "lazy"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and "Traceback" not in stdout + stderr, (stdout + stderr)[-4000:]
    line = ("gpt2-hpu: error: --compile needs eager mode, and this HPU runs in lazy mode: set PT_HPU_LAZY_MODE=0 "
            "(or --hpu-mode eager) to compile, or drop --compile")
    assert stderr.strip().splitlines()[-1] == line and (stdout + stderr).count(line) == 1
    # Every rank (and its data loader workers) ended with the launcher.
    deadline = time.time() + 10
    while _group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _group_members(proc.pid)


def _group_members(pgid):
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members

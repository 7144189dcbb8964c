"""The checks of `gpt2-hpu-selfcheck`, in table order, and the context they share.

Each check returns its one-line detail (PASS), or raises children.Failed / children.Skipped. Everything that
touches an HPU happens in a child process (probes.py, or a Fairseq training run), never here.
"""
import os
import re
import time
from collections import OrderedDict

from gpt2_hpu.selfcheck import training
from gpt2_hpu.selfcheck.children import Failed, python_command, run_child

LAZY_MODE_ENV = "PT_HPU_LAZY_MODE"
MAX_HCCL_RANKS = 8  # one Gaudi server
MEMORY_PROBE_MIB = 64


class Context:
    """What the checks share: the work folder, the per-check deadline, the children's environment, and
    results computed once (the device probe, the dataset, the CPU reference run)."""

    def __init__(self, workdir, timeout, env):
        self.workdir = workdir
        self.timeout = timeout
        self.base_env = dict(env, PYTHONUNBUFFERED="1")
        self.log_dir = os.path.join(workdir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.deadline = None
        self._once = {}
        self._children = 0

    def start_check(self):
        self.deadline = time.monotonic() + self.timeout

    def env(self, mode=None):
        """The selfcheck's own environment; with a mode, PT_HPU_LAZY_MODE set for it (the bridge reads it once,
        when it loads, so each mode needs a process of its own)."""
        env = dict(self.base_env)
        if mode is not None:
            env[LAZY_MODE_ENV] = "1" if mode == "lazy" else "0"
        return env

    def run(self, label, cmd, mode=None):
        """Runs a child until the current check's deadline; returns its ChildResult, or raises Failed."""
        self._children += 1
        log = os.path.join(self.log_dir, f"{self._children:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log")
        result = run_child(cmd, self.env(mode), self.deadline - time.monotonic(), log, cwd=self.workdir)
        if result.timed_out:
            raise Failed(f"{label}: no result within the check's {self.timeout:g} s (--timeout); hung? stopped it")
        if result.returncode != 0:
            raise Failed(result.cause(label))
        return result

    def probe(self, label, name, *args, mode=None):
        statement = "from gpt2_hpu.selfcheck.probes import main; main()"
        result = self.run(label, python_command(statement, name, *[str(a) for a in args]), mode=mode)
        value = result.result()
        if value is None:
            raise Failed(f"{label}: the probe ended without a result line")
        return value

    def once(self, key, compute):
        """compute() the first time; its value (or its failure) every time after."""
        if key not in self._once:
            try:
                self._once[key] = (True, compute())
            except Failed as e:
                self._once[key] = (False, str(e))
        ok, value = self._once[key]
        if not ok:
            raise Failed(value)
        return value

    def device_info(self):
        return self.once("device", lambda: self.probe("device probe", "device"))

    def card_count(self):
        try:
            return self.device_info()["count"]
        except Failed as e:
            raise Failed(f"card count unknown ({e})") from None


# --- the bridge ---------------------------------------------------------------------------------------
def check_versions(ctx):
    info = ctx.device_info()
    where = f" from {info['bridge_location']}" if info["bridge_location"] else ""
    return f"torch {info['torch']}, Habana bridge {info['bridge'] or '(version not recorded)'}{where}"


def check_cards(ctx):
    info = ctx.device_info()
    if not info["count"]:
        raise Failed("no HPU visible to this process: device_count() is 0")
    return f"{info['count']} x {info['name'] or 'HPU (name not reported)'}"


def check_mode(ctx):
    info = ctx.device_info()
    source = f"{LAZY_MODE_ENV}={info['lazy_env']}" if info["lazy_env"] is not None else \
        f"{LAZY_MODE_ENV} unset: the bridge's default"
    return f"{info['mode']} ({source}); hccl, dropout-checkpoint, zero1-checkpoint and memory run in it"


def _check_mark_step(mode):
    def check(ctx):
        value = ctx.probe(f"{mode} probe", "mark_step", mode, mode=mode)
        ran = "the graph ran at mark_step" if mode == "lazy" else "ops ran at once, mark_step is a no-op"
        return f"{LAZY_MODE_ENV}={'1' if mode == 'lazy' else '0'} gives {mode} mode; {ran}: " \
               f"(2x - 1).sum() over 1..8 = 64 on {value['device']}"
    return check


def check_hccl(ctx):
    cards = ctx.card_count()
    if cards < 1:
        raise Failed("no HPU to run hccl on")
    world = min(cards, MAX_HCCL_RANKS)
    ctx.probe(f"hccl on {world} ranks", "hccl", world)
    return f"{world} spawned ranks, one per card: all_reduce SUM and all_gather give the expected values"


def check_memory(ctx):
    value = ctx.probe("memory probe", "memory", MEMORY_PROBE_MIB)
    gib = 2 ** 30
    return (f"a {MEMORY_PROBE_MIB} MiB tensor: +{value['grew_mib']:.0f} MiB in use, -{value['freed_mib']:.0f} MiB "
            f"freed; in use {value['in_use'] / gib:.2f} GiB, peak {value['peak'] / gib:.2f} GiB, "
            f"limit {value['limit'] / gib:.1f} GiB")


# name -> (check, what it checks), in table order
CHECKS = OrderedDict([
    ("versions", (check_versions, "torch and Habana bridge versions")),
    ("cards", (check_cards, "number of HPUs and their name")),
    ("mode", (check_mode, "the lazy/eager mode the bridge runs in by default")),
    ("mark-step-lazy", (_check_mark_step("lazy"), "PT_HPU_LAZY_MODE=1 gives lazy mode; a graph runs at mark_step")),
    ("mark-step-eager", (_check_mark_step("eager"),
                         "PT_HPU_LAZY_MODE=0 gives eager mode; ops run, mark_step is not called")),
    ("hccl", (check_hccl, "all-reduce and all-gather over hccl, one spawned process per card (up to 8)")),
    ("train-lazy", (training.check_training("lazy"), "a tiny GPT-2 trains in lazy mode; losses equal the CPU's")),
    ("train-eager", (training.check_training("eager"), "a tiny GPT-2 trains in eager mode; losses equal the CPU's")),
    ("dropout-checkpoint", (training.check_dropout_checkpointing,
                            "with dropout, activation checkpointing leaves training unchanged")),
    ("zero1-checkpoint", (training.check_zero1_checkpoint, "ZeRO-1 on 2 cards saves a checkpoint and resumes from it")),
    ("memory", (check_memory, "HPU memory counters follow an allocation and its release")),
])

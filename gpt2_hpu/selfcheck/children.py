"""Child processes of the selfcheck: each runs with a deadline, its output goes to a log file, and a failure
comes back as one line of cause.

The selfcheck's own process never loads Habana's bridge: on a Gaudi, most device calls acquire the card, and a
process holding a card keeps every later child off it on a 1-card host.
"""
import json
import os
import re
import signal
import subprocess
import sys

RESULT_PREFIX = "gpt2-hpu-selfcheck-result: "
CHECK_FAILED = "CheckFailed"  # the exception class the probes raise; its message is the cause itself

# "RuntimeError: ...", "torch.distributed.DistBackendError: ...", "gpt2-hpu: error: ..."
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failed|Failure)|[\w.-]+: error): ")
_NOISE = ("Traceback (most recent call last)", "During handling of the above exception",
          "The above exception was the direct cause")


class Failed(Exception):
    """A check failed; the message is the one line shown in the table."""


class Skipped(Exception):
    """A check cannot run on this host; the message says why."""


def last_error_line(output):
    """The last line of `output` that states an error (an exception message, a CLI error), else the last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            name, _, message = line.partition(": ")
            name = name.rsplit(".", 1)[-1]  # the class, without the module it lives in
            return message if name == CHECK_FAILED else f"{name}: {message}"
    for line in reversed(lines):
        if not line.startswith(_NOISE) and not line.startswith("File ") and not set(line) <= set("^~ "):
            return line
    return ""


class ChildResult:
    def __init__(self, returncode, output, timed_out):
        self.returncode, self.output, self.timed_out = returncode, output, timed_out

    def cause(self, label):
        """One line saying why this child failed, prefixed with what it was doing."""
        line = last_error_line(self.output)
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"{label}: killed by {name}" + (f" after: {line}" if line else "")
        return f"{label}: {line or f'exited with code {self.returncode} and no output'}"

    def result(self):
        """The JSON object a probe printed, or None."""
        for line in reversed(self.output.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        return None


def run_child(cmd, env, timeout, log_path, cwd):
    """Runs `cmd` in its own session (so a hang is stopped with every process it started) until `timeout`.

    `cwd`: the work folder, so that `python -c` (whose sys.path starts with the current folder) imports the
    same gpt2_hpu as this process, whatever folder the command was started from."""
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Ranks spawned by the child share its process group: end them too, hang or not.
            _kill_group(proc.pid)
            proc.wait()
    with open(log_path, errors="replace") as log:
        output = log.read()
    return ChildResult(proc.returncode, output, timed_out)


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def python_command(statement, *args):
    """`python -c statement args...`: a -c main module is not re-imported by the children torch spawns."""
    return [sys.executable, "-c", statement, *args]

"""The plugin's one error family: a problem the user can fix ends in one line on stderr and an exit status.

Every command turns a `Gpt2HpuError` into `PROG: error: MESSAGE` and `exit_code`, and nothing else: the message
says what is wrong and what to do, and a traceback would only hide it.
"""
import sys


class Gpt2HpuError(Exception):
    """A user-facing problem; `str(error)` is the message, `line()` the one line the user sees."""

    prog = "gpt2-hpu"
    exit_code = 2

    def __init__(self, message, exit_code=None, prog=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        if prog is not None:
            self.prog = prog

    def line(self):
        return f"{self.prog}: error: {self}"

    def exit(self):
        """Print the line and end the process with the exit code."""
        print(self.line(), file=sys.stderr, flush=True)
        raise SystemExit(self.exit_code)


class UsageError(Gpt2HpuError):
    """A setting, launch environment or installation that cannot work (exit 2)."""


class PrepareError(Gpt2HpuError):
    """Bad input to `gpt2-hpu-prepare` (exit 1), or an output directory holding something else (exit 2)."""

    prog = "gpt2-hpu-prepare"
    exit_code = 1


class DemoError(Gpt2HpuError):
    """`gpt2-hpu-demo` cannot go on (exit 1)."""

    prog = "gpt2-hpu-demo"
    exit_code = 1


class CheckpointError(Gpt2HpuError):
    """A checkpoint that cannot be read, or that does not fit the run (exit 2)."""


class TrainingStopped(Gpt2HpuError):
    """Training cannot go on: a non-finite loss, gradient or parameter (exit 1)."""

    exit_code = 1

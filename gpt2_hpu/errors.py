"""Bad input ends in one line on stderr (what is wrong, what to do) and a non-zero exit."""
import sys


class UsageError(Exception):
    """A problem the user can fix; its message is the one line they see."""


def exit_with(message, prog="gpt2-hpu", code=2):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)

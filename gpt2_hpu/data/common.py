"""What every stage of `gpt2-hpu-prepare` shares: its messages, crash-safe JSON files and content hashes."""
import hashlib
import json
import os
import sys

PROG = "gpt2-hpu-prepare"


def info(quiet, message):
    if not quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def write_json_atomic(path, obj):
    """Write `path` so that a crash leaves either the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable (an earlier run died writing it)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fsync_dir(path):
    """Make the renames inside `path` durable; file systems that cannot sync a folder are let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_files(paths):
    """One SHA-256 over the contents of `paths`, in order, read in bounded blocks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()

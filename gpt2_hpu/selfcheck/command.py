"""`gpt2-hpu-selfcheck`: runs the checks, prints the table, exits 0 when nothing failed."""
import argparse
import os
import shutil
import sys
import tempfile
import time

from gpt2_hpu.selfcheck.checks import CHECKS, Context
from gpt2_hpu.selfcheck.children import Failed, Skipped

PROG = "gpt2-hpu-selfcheck"
DEFAULT_TIMEOUT = 240


def build_parser():
    listing = "\n".join(f"  {name:<19} {text}" for name, (_, text) in CHECKS.items())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Checks that this host trains GPT-2 on its HPUs (Gaudi), one child process per check.",
        epilog="checks:\n" + listing)
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these checks")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data, checkpoints)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"time allowed to each check before it fails (default {DEFAULT_TIMEOUT})")
    return parser


def _selected(parser, only):
    if not only:
        return list(CHECKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        parser.error(f"unknown check {', '.join(unknown) or '(none given)'}: choose from {', '.join(CHECKS)}")
    return [n for n in CHECKS if n in names]


def run_checks(names, ctx, progress=sys.stderr):
    rows = []
    for name in names:
        ctx.start_check()
        start = time.monotonic()
        try:
            status, detail = "PASS", CHECKS[name][0](ctx)
        except Skipped as e:
            status, detail = "SKIP", str(e)
        except Failed as e:
            status, detail = "FAIL", str(e)
        except Exception as e:  # a fault of the selfcheck itself: still one row, and the others still run
            status, detail = "FAIL", f"selfcheck error: {type(e).__name__}: {e}"
        detail = " ".join(detail.split())
        rows.append((name, status, detail))
        print(f"{PROG}: {name}: {status} ({time.monotonic() - start:.1f} s)", file=progress, flush=True)
    return rows


def format_table(rows):
    header = ("check", "result", "detail")
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(2)]
    lines = [f"{header[0]:<{widths[0]}} | {header[1]:<{widths[1]}} | {header[2]}",
             f"{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * 6}"]
    lines += [f"{name:<{widths[0]}} | {status:<{widths[1]}} | {detail}" for name, status, detail in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    names = _selected(parser, args.only)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    workdir = tempfile.mkdtemp(prefix="gpt2-hpu-selfcheck-")
    print(f"{PROG}: {len(names)} checks, work folder {workdir}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        rows = run_checks(names, Context(workdir, args.timeout, os.environ))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ("PASS", "FAIL", "SKIP")}
    summary = (f"{len(rows)} checks: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
               f"in {time.monotonic() - start:.0f} s")
    if args.keep:
        summary += f"; logs in {os.path.join(workdir, 'logs')}"
    elif counts["FAIL"]:
        summary += "; rerun with --keep for the full logs"
    print(format_table(rows))
    print(summary, flush=True)
    return 1 if counts["FAIL"] else 0

#!/usr/bin/env python
"""What the plugin adds to an update on CPU, counted by a profiler rather than timed on the wall clock.

On a shared host the wall time of the same run moves by 5 to 10 % from run to run, so a wall-clock benchmark
cannot tell whether the plugin (without the fast path) costs more or less than 2 % of an update. The plugin's
own work per update is host work: Python around Fairseq's steps. This script trains stock Fairseq and the plugin
(`stock-fp32` and `plugin-fp32` of train_throughput.py, tiny preset, one thread; `--fast-path` adds
`plugin-fast`) each in its own process, with `cProfile` switched on from update W's log line to update N's, and
reports per update:

- `python_ms`: time spent in Python functions' own code (the interpreter's work: Fairseq's and the plugin's);
- `native_ms`: time in C functions, torch's operators among them (the arithmetic, the same in both runs);
- `calls`: Python function calls; `torch_calls`: calls of torch's C functions and tensor methods (each operator
  the update dispatches, and small ones such as `size`).

`overhead_python=` is (plugin python_ms - stock python_ms) / stock's python_ms + native_ms: what the plugin's
host code adds to, or saves from, a stock update. The profiler slows Python several-fold, so both ms figures
are profiled times, comparable with each other, not with an unprofiled run.

With `--preset host` (GPT-2 small's 12 layers and update-freq 8 at tiny widths) the arithmetic is next to
nothing, and the counts are the host work a GPU would wait for.

    python benchmarks/plugin_overhead.py [--updates 150 --warmup 20] [--out results.json] [--keep-profiles DIR]
    python benchmarks/plugin_overhead.py --preset host --fast-path --updates 60 --warmup 20
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as bench  # noqa: E402  (the same commands as the throughput benchmark)

RESULT_TAG = "PLUGIN_OVERHEAD_RESULT "

CHILD = r"""
import cProfile, json, logging, os, pstats, sys
import fairseq_cli.train as train

start, stop = int(sys.argv.pop(1)), int(sys.argv.pop(1))
profiler = cProfile.Profile()
window = []

class Window(logging.Handler):
    def emit(self, record):
        if record.name != "train_inner":
            return
        updates = int(float(json.loads(record.getMessage())["num_updates"]))
        if updates == start:
            window.append(updates)
            profiler.enable()
        elif updates == stop and window:
            profiler.disable()
            window.append(updates)

logging.getLogger().addHandler(Window(logging.INFO))
train.cli_main()
stats = pstats.Stats(profiler).stats
native = lambda f: f == "~"
out = {"window": window, "plugin_loaded": "gpt2_hpu" in sys.modules,
       "python_s": sum(tt for (f, _, _), (_, _, tt, _, _) in stats.items() if not native(f)),
       "native_s": sum(tt for (f, _, _), (_, _, tt, _, _) in stats.items() if native(f)),
       "calls": sum(nc for (f, _, _), (_, nc, _, _, _) in stats.items() if not native(f)),
       "torch_calls": sum(nc for (f, _, name), (_, nc, _, _, _) in stats.items() if native(f) and "torch" in name)}
if os.environ.get("PLUGIN_OVERHEAD_PROFILE"):  # --keep-profiles: for pstats, function by function
    profiler.dump_stats(os.environ["PLUGIN_OVERHEAD_PROFILE"])
print("PLUGIN_OVERHEAD_RESULT " + json.dumps(out), flush=True)
"""


def profile(config, args, work_dir):
    """One configuration's profiled window, per update."""
    cmd = [sys.executable, "-c", CHILD, str(args.warmup), str(args.updates)] + bench.fairseq_args(config, args)
    keep = os.path.join(args.keep_profiles, config + ".prof") if args.keep_profiles else ""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PLUGIN_OVERHEAD_PROFILE=keep)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work_dir)
    lines = proc.stdout.splitlines()
    child = next((json.loads(ln[len(RESULT_TAG):]) for ln in reversed(lines) if ln.startswith(RESULT_TAG)), None)
    if proc.returncode != 0 or child is None or len(child["window"]) != 2:
        sys.exit("%s failed (exit status %s); last lines:\n%s" % (config, proc.returncode, "\n".join(lines[-20:])))
    if child["plugin_loaded"] != bench.CONFIGS[config][0]:
        sys.exit("%s: the plugin was %sloaded" % (config, "" if child["plugin_loaded"] else "not "))
    n = child["window"][1] - child["window"][0]
    return {"updates": n, "python_ms": 1e3 * child["python_s"] / n, "native_ms": 1e3 * child["native_s"] / n,
            "calls": child["calls"] / n, "torch_calls": child["torch_calls"] / n,
            # As a person would type it from the repository root (the wrapper only adds the profiler).
            "command": " ".join(["python", "-m", "fairseq_cli.train"] + [
                shlex.quote(os.path.relpath(a, bench.REPO) if a == bench.PLUGIN_DIR else a) for a in cmd[5:]])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", help="results JSON (default: none)")
    p.add_argument("--keep-profiles", metavar="DIR", help="write <config>.prof (cProfile) here for each one")
    p.add_argument("--preset", choices=("tiny", "host"), default="tiny",
                   help="the throughput benchmark's preset: tiny, or host (GPT-2 small's 12 layers at tiny widths)")
    p.add_argument("--fast-path", action="store_true", help="profile plugin-fast (--fast-path) too")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.updates:
        p.error("need 1 <= --warmup < --updates")
    # The throughput benchmark's CPU commands, one log line per update.
    args.device, args.log_interval = "cpu", 1
    args.fast_flags = bench.FAST_PATH_FLAGS if args.fast_path else []
    if args.keep_profiles:
        os.makedirs(args.keep_profiles, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="plugin-overhead-")  # Fairseq makes its checkpoint folder even with --no-save
    configs = ("stock-fp32", "plugin-fp32") + (("plugin-fast",) if args.fast_path else ())
    results = {c: profile(c, args, work_dir) for c in configs}
    stock, plugin = results["stock-fp32"], results["plugin-fp32"]
    overhead = (plugin["python_ms"] - stock["python_ms"]) / (stock["python_ms"] + stock["native_ms"])
    print("%-12s %10s %10s %10s %12s" % ("config", "python_ms", "native_ms", "calls", "torch_calls"))
    for name, r in results.items():
        print("%-12s %10.2f %10.2f %10.0f %12.0f" % (name, r["python_ms"], r["native_ms"], r["calls"],
                                                    r["torch_calls"]))
    print("overhead_python=%+.2f%%" % (100 * overhead))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "updates": args.updates, "warmup": args.warmup, "threads": 1,
                       "overhead_python": round(overhead, 4), "configs": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

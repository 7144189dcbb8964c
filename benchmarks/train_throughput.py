#!/usr/bin/env python
"""Training throughput: stock Fairseq against the plugin, GPT-2 on Fairseq's dummy data, one device.

Every configuration trains the same model on the same device for the same number of updates, one after
another, each in its own process (`python -m fairseq_cli.train` through a small wrapper; stock runs never load
the plugin, plugin runs add `--user-dir <this repository>/gpt2_hpu`). Data is Fairseq's `dummy_lm` task: one
fixed batch of `--tokens-per-sample`-token sequences over the preset's vocabulary (GPT-2's size for `seed`), so
the input pipeline costs nothing and every configuration sees identical shapes.

How tokens/s is measured: Fairseq logs one `train_inner` line every `--log-interval` updates (the preset's: 10
for `seed` as in the seed recipe and for `host`, 1 for `tiny`); the wrapper stamps each with
`time.perf_counter()` as it is logged.
Writing that line reads the update's loss, so the host has waited for the device there: each stamp marks the end
of an update's device work. Throughput is the tokens of updates W+1..N (each line's `wpb`, Fairseq's mean per
update since the line before, times those updates) over the time from
update W's stamp to update N's
(`gpt2_hpu.throughput.Throughput`, warm-up W). Start-up, compilation and the first W updates fall outside
the window; inside it everything a training loop pays is counted (batching, the optimizer, logging, updates
skipped after an fp16 overflow: their time counts, their tokens do not, and the result says how many).
Fairseq's own `wps` is not used: its first value covers start-up and its `wall` fields are whole seconds.

MFU divides the model's training FLOPs per token (6N + 12·L·d·T, `gpt2_hpu.throughput`, counted on the stock
model built in this process on the meta device) times tokens/s by the device's dense bf16 peak (none on CPU).
Peak memory: `torch.cuda.max_memory_allocated()` in the child on CUDA, the child's maximum RSS on CPU.
Page faults: the child's minor faults per update in the window (`getrusage`), the kernel handing the process
fresh zero-filled pages.

`--host-malloc keep` starts every child with glibc's malloc told to keep the memory it frees
(`HOST_MALLOC`). By default glibc gives a freed block of a tensor's size back to the kernel (an mmap'd block is
unmapped, the heap's free top is trimmed), so the next micro-batch's tensor of that size faults fresh pages in
again: on a CPU that page-fault work is part of every update, more so for eager code that allocates each
intermediate anew than for compiled graphs that reuse their buffers. `keep` takes it out of every
configuration alike, so the CPU ratios show the work itself; `default` is what a plain run gets. (CUDA's and
Habana's caching allocators already keep device memory.)

The `reference` configuration is not Fairseq: `reference_gpt2.py` trains the same model on the same batches in a
bare PyTorch loop with the fast path's kernels, stamping its own log lines the same way. On CUDA it runs in the
same list, and `fast_over_reference=` says what share of its tokens/s the fast path reaches.

    python benchmarks/train_throughput.py --device cpu --preset tiny
    python benchmarks/train_throughput.py --device cpu --preset host   # what an update costs the host
    python benchmarks/train_throughput.py --device cuda --preset seed --out results.json --log-dir logs

On CPU, where other work shares the cores, the list runs twice (`--rounds`), the second time in reverse
order, and each configuration keeps its fastest round. It prints one row per configuration, then `speedup=`
(plugin-fast over stock-fp16 on CUDA, over stock-fp32 on CPU) and, on CPU, `overhead=` (the share of
stock-fp32's tokens/s that plugin-fp32 loses) and `overhead_cpu_time=` (the extra CPU time per update of
plugin-fp32: less sensitive to other work on the host than wall time); with several rounds also
`overhead_median_of_rounds=` (the median over rounds of that round's overhead: the two ran back to back). It
writes a JSON file (default `benchmarks/results/<device>-<date>.json`). A configuration that fails shows its last
log lines and is recorded as failed; the script then exits 1.
"""
import argparse
import collections
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(REPO, "gpt2_hpu")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Imported before Fairseq: importing gpt2_hpu with Fairseq loaded would adapt this process's Fairseq.
from gpt2_hpu.throughput import Throughput, fairseq_lm_flops_per_token, peak_bf16_flops  # noqa: E402

REFERENCE = "reference"
REFERENCE_SCRIPT = os.path.join(REPO, "benchmarks", "reference_gpt2.py")

# What the plugin's fast configuration adds; `--fast-flags` overrides it for one run.
FAST_PATH_FLAGS = ["--fast-path"]

# Each configuration: whether it loads the plugin, and the flags it adds to the preset's command.
# "{fast}" stands for the fast-path flags. Add a configuration here and name it in DEVICE_CONFIGS.
CONFIGS = {
    "stock-fp16": (False, ["--fp16"]),
    "stock-fp16-ckpt": (False, ["--fp16", "--checkpoint-activations"]),
    "stock-fp32": (False, []),
    "plugin-fp32": (True, []),
    "plugin-fast": (True, ["{fast}"]),
    # the fast path's kernels and bf16 without torch.compile: what compilation adds
    "plugin-fast-eager": (True, ["--bf16", "--fused-attention", "--optimizer", "fused_adamw"]),
    # the fast path with its compiled graphs replayed as CUDA graphs (CUDA only): what host launches cost
    "plugin-fast-graphs": (True, ["{fast}", "--compile-mode", "reduce-overhead"]),
    # not Fairseq: the same model and batches in a bare PyTorch loop with the fast path's kernels
    # (reference_gpt2.py, which reads the preset's Fairseq arguments): those kernels without a framework
    REFERENCE: (False, []),
    # the same without dropout, as the plain-PyTorch figure the fast path's goal was set against
    REFERENCE + "-nodrop": (False, ["--dropout", "0", "--attention-dropout", "0"]),
}
DEVICE_CONFIGS = {
    "cuda": ["stock-fp16", "plugin-fast", "plugin-fast-graphs", "plugin-fast-eager", REFERENCE],
    "cpu": ["stock-fp32", "plugin-fp32", "plugin-fast"],
}
BASELINE = {"cuda": "stock-fp16", "cpu": "stock-fp32"}

# The seed recipe's optimisation settings (README), on dummy data, without checkpoints or validation.
RECIPE = [
    "--task", "dummy_lm", "--arch", "transformer_lm_gpt", "--share-decoder-input-output-embed", "--dropout", "0.1",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.95)", "--weight-decay", "0.1", "--clip-norm", "1.0",
    "--lr", "0.0006", "--lr-scheduler", "cosine", "--warmup-updates", "1000", "--warmup-init-lr", "1e-07",
    "--disable-validation", "--no-save", "--num-workers", "0", "--seed", "1",  # dummy batches need no workers
    "--log-format", "json",  # --log-interval: the benchmark's own option
]
PRESETS = {
    # A 2-layer, 64-wide GPT over 4,096 types: the whole pipeline in a few minutes on 2 CPU cores, with updates
    # short enough that a per-update cost of the plugin would show.
    "tiny": dict(model=["--dict-size", "4092", "--decoder-layers", "2", "--decoder-embed-dim", "64",
                        "--decoder-ffn-embed-dim", "256", "--decoder-attention-heads", "2"],
                 tokens_per_sample=64, batch_size=8, update_freq=2, updates=30, warmup=5, log_interval=1),
    # GPT-2 small per device as in the seed recipe: 8 x 1024 tokens, update-freq 8 (65,536 tokens an update),
    # over 50,260 words plus Fairseq's four specials: GPT-2's dictionary; a log line every 10 updates, as the
    # recipe's --log-interval 10 (a logging step reads every statistic back to the host).
    "seed": dict(model=["--dict-size", "50260"], tokens_per_sample=1024, batch_size=8, update_freq=8,
                 updates=40, warmup=10, log_interval=10),
    # GPT-2 small's modules (12 layers, 12 heads) and the seed's update-freq 8, at widths so small that the
    # arithmetic costs next to nothing: an update's time is the host's work (Fairseq's and the plugin's Python,
    # dispatch, the compiled graphs' wrappers), which is what a GPU waits for when the host falls behind.
    "host": dict(model=["--dict-size", "508", "--decoder-embed-dim", "48", "--decoder-ffn-embed-dim", "96",
                        "--decoder-attention-heads", "12"],
                 tokens_per_sample=32, batch_size=2, update_freq=8, updates=60, warmup=20, log_interval=10),
}

RESULT_TAG = "TRAIN_THROUGHPUT_RESULT "

# glibc tunables for `--host-malloc keep`: blocks below 32 MiB (the ceiling of glibc's own adaptive mmap
# threshold on 64-bit, accepted by every glibc) come from the heap, and the heap is trimmed only past 1 GiB of
# free top. Setting either stops glibc adapting both, so they are set together (the trim threshold alone would
# leave the mmap threshold at 128 KiB, and more blocks unmapped than before).
HOST_MALLOC = {
    "default": [],
    "keep": ["glibc.malloc.mmap_threshold=33554432", "glibc.malloc.trim_threshold=1073741824"],
}

# Runs fairseq_cli.train unchanged, stamping each train_inner log line, then reports peak memory and versions.
CHILD = "import sys\nsys.path.insert(0, %r)\n" % os.path.dirname(os.path.abspath(__file__)) + r"""
import json, logging, os, time
import fairseq_cli.train as train  # sets up Fairseq's logging first
from device_facts import device_facts, page_faults

marks, overflows = [], [0]

class Stamp(logging.Handler):
    def emit(self, record):
        if record.name == "train_inner":
            marks.append((time.perf_counter(), time.process_time(), page_faults(), record.getMessage()))
        elif "overflow detected" in record.getMessage():
            overflows[0] += 1

logging.getLogger().addHandler(Stamp(logging.INFO))
train.cli_main()

import fairseq, platform, torch
out = {"marks": [], "overflows": overflows[0], "plugin_loaded": "gpt2_hpu" in sys.modules,
       "torch": torch.__version__, "fairseq": fairseq.__version__, "python": platform.python_version(),
       "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
for t, cpu_t, faults, message in marks:
    stats = json.loads(message)
    out["marks"].append([t, int(float(stats["num_updates"])), float(stats["wpb"]), cpu_t, float(stats["loss"]),
                         faults])
name, peak, kind = device_facts("--cpu" not in sys.argv and torch.cuda.is_available())
out.update(device_name=name, peak_mem_bytes=peak, peak_mem_kind=kind)
print("TRAIN_THROUGHPUT_RESULT " + json.dumps(out), flush=True)
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(DEVICE_CONFIGS), required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--configs", help="comma-separated subset, in order (default: the device's list)")
    p.add_argument("--updates", type=int, help="updates per configuration (default: the preset's)")
    p.add_argument("--warmup", type=int, help="updates left out before the window opens, >= 1 "
                                              "(default: the preset's)")
    p.add_argument("--fast-flags", help="what plugin-fast adds, one shell-quoted string (default: %r)"
                                        % " ".join(FAST_PATH_FLAGS))
    p.add_argument("--out", help="results JSON (default: benchmarks/results/<device>-<date>.json)")
    p.add_argument("--log-dir", help="keep each configuration's full log here (default: a temporary folder)")
    p.add_argument("--rounds", type=int, help="run the list this many times, every other round in reverse "
                                              "order, and keep each configuration's fastest round "
                                              "(default: 2 on cpu, where other work shares the cores, 1 on cuda)")
    p.add_argument("--config-timeout", type=float, default=900, help="seconds one configuration may run")
    p.add_argument("--log-interval", type=int,
                   help="Fairseq's --log-interval, and so the updates between two time stamps; --updates and "
                        "--warmup must be multiples of it (default: the preset's: 10 for seed and host, as the "
                        "seed recipe; 1 for tiny). A logging step reads every statistic back to the host")
    p.add_argument("--host-malloc", choices=sorted(HOST_MALLOC), default="default",
                   help="glibc malloc in every child: 'default', or 'keep' the memory it frees instead of giving "
                        "it back to the kernel and faulting it in again (see above; default: default)")
    args = p.parse_args(argv)
    if HOST_MALLOC[args.host_malloc] and platform.libc_ver()[0] != "glibc":
        p.error("--host-malloc %s sets glibc's malloc tunables, and this Python runs on %s: leave it out"
                % (args.host_malloc, platform.libc_ver()[0] or "another C library"))
    preset = PRESETS[args.preset]
    args.updates = preset["updates"] if args.updates is None else args.updates
    args.warmup = preset["warmup"] if args.warmup is None else args.warmup
    args.log_interval = preset["log_interval"] if args.log_interval is None else args.log_interval
    if args.warmup < 1 or args.warmup >= args.updates:
        # The first update's start is not logged, so the window opens at the end of one at the earliest.
        p.error("need 1 <= --warmup < --updates, got warmup %d, updates %d" % (args.warmup, args.updates))
    if args.log_interval < 1 or args.updates % args.log_interval or args.warmup % args.log_interval:
        p.error("--updates (%d) and --warmup (%d) must be multiples of --log-interval (%d)" % (
            args.updates, args.warmup, args.log_interval))
    args.configs = args.configs.split(",") if args.configs else list(DEVICE_CONFIGS[args.device])
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error("unknown configuration(s) %s; known: %s" % (", ".join(unknown), ", ".join(CONFIGS)))
    args.rounds = (2 if args.device == "cpu" else 1) if args.rounds is None else args.rounds
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.fast_flags = FAST_PATH_FLAGS if args.fast_flags is None else shlex.split(args.fast_flags)
    if args.out is None:
        args.out = os.path.join(REPO, "benchmarks", "results",
                                "%s-%s.json" % (args.device, datetime.date.today().isoformat()))
    return args


def fairseq_args(config, args):
    """The `fairseq_cli.train` arguments of one configuration."""
    preset = PRESETS[args.preset]
    uses_plugin, flags = CONFIGS[config]
    out = list(RECIPE) + preset["model"] + [
        "--tokens-per-sample", str(preset["tokens_per_sample"]), "--batch-size", str(preset["batch_size"]),
        "--update-freq", str(preset["update_freq"]), "--max-update", str(args.updates),
        "--log-interval", str(args.log_interval),
    ]
    if args.device == "cpu":
        out.append("--cpu")
    if uses_plugin:
        out += ["--user-dir", PLUGIN_DIR]
    for flag in flags:
        out += args.fast_flags if flag == "{fast}" else [flag]
    return out


def model_flops_per_token(args):
    """Training FLOPs per token of the preset's model, built (stock, on the meta device) from its arguments."""
    import torch

    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    fs_args = [a for a in fairseq_args(BASELINE[args.device], args) if a != "--fp16"]
    # Hydra's deprecation notes and Fairseq's set-up lines would bury the benchmark's own output.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = options.get_training_parser()
            cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=fs_args))
            task = tasks.setup_task(cfg.task)
            with torch.device("meta"):
                model = task.build_model(cfg.model)
    finally:
        logging.disable(logging.NOTSET)
    return fairseq_lm_flops_per_token(model, PRESETS[args.preset]["tokens_per_sample"])


def measure(marks, warmup, flops_per_token=None, peak_flops=None):
    """Replay the child's stamped log lines `[(time, num_updates, tokens[, process time, loss, page faults]),
    ...]` through a `Throughput`; `tokens` is Fairseq's `wpb`, the mean per update since the line before."""
    now = [None]
    meter = Throughput(warmup_updates=warmup, flops_per_token=flops_per_token, peak_flops=peak_flops,
                       clock=lambda: now[0])
    done = 0
    for t, num_updates, tokens, *_ in marks:
        now[0] = t
        meter.update(tokens * (num_updates - done), updates=num_updates - done)
        done = num_updates
    summary = meter.summary()
    # The median update shows what contention on a shared host does to the mean.
    window = [m for m in marks if m[1] >= warmup]
    steps = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(window, window[1:])]
    summary["median_update_s"] = statistics.median(steps) if steps else None
    if len(window) > 1 and len(window[0]) > 3:
        # The child's CPU time per update: what the work costs, whatever else wants the cores meanwhile.
        summary["cpu_s_per_update"] = (window[-1][3] - window[0][3]) / (window[-1][1] - window[0][1])
    if len(window) > 1 and len(window[0]) > 5 and window[0][5] is not None:
        summary["faults_per_update"] = round((window[-1][5] - window[0][5]) / (window[-1][1] - window[0][1]))
    return summary


def command(config, args):
    """The child's command line, and the command as a person would type it from the repository root (the
    Fairseq wrapper only adds measurements)."""
    if config.startswith(REFERENCE):
        cmd = [sys.executable, REFERENCE_SCRIPT] + fairseq_args(config, args)
        return cmd, ["python", os.path.relpath(REFERENCE_SCRIPT, REPO)] + cmd[2:]
    cmd = [sys.executable, "-c", CHILD] + fairseq_args(config, args)
    return cmd, ["python", "-m", "fairseq_cli.train"] + [os.path.relpath(a, REPO) if a == PLUGIN_DIR else a
                                                         for a in cmd[3:]]


def child_env(args):
    """The environment of every child: this one's, unbuffered, with `--host-malloc`'s tunables added to any
    GLIBC_TUNABLES already set."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t] + HOST_MALLOC[args.host_malloc]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def run_config(config, args, log_path, flops_per_token):
    """Train one configuration in a child process; its numbers, or its failure and last log lines."""
    cmd, shown = command(config, args)
    env = child_env(args)
    record = {"command": " ".join(shlex.quote(a) for a in shown), "log": os.path.basename(log_path), "ok": False}
    began = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.work_dir,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.config_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = "timeout after %gs" % args.config_timeout
    record["process_s"] = round(time.perf_counter() - began, 1)
    with open(log_path, errors="replace") as log:
        lines = log.read().splitlines()
    child = next((json.loads(ln[len(RESULT_TAG):]) for ln in reversed(lines) if ln.startswith(RESULT_TAG)), None)
    if rc != 0 or child is None:
        record["error"] = "exit status %s" % rc if rc != 0 else "no result line"
        record["last_lines"] = lines[-25:]
        return record
    if not child["marks"] or child["marks"][-1][1] <= args.warmup:
        record["error"] = "only %d updates logged, warm-up is %d" % (
            child["marks"][-1][1] if child["marks"] else 0, args.warmup)
        record["last_lines"] = lines[-25:]
        return record
    if child["plugin_loaded"] != CONFIGS[config][0]:
        record["error"] = "plugin %s, expected %s" % (
            "loaded" if child["plugin_loaded"] else "not loaded", "loaded" if CONFIGS[config][0] else "not")
        return record
    peak = peak_bf16_flops(child["device_name"]) if args.device != "cpu" else None
    record.update(measure(child["marks"], args.warmup, flops_per_token, peak))
    record.update(ok=True, device_name=child["device_name"], peak_flops=peak,
                  peak_mem_gb=round(child["peak_mem_bytes"] / 2 ** 30, 3), peak_mem_kind=child["peak_mem_kind"],
                  updates_logged=child["marks"][-1][1], overflow_skipped_updates=child["overflows"],
                  # The same seed and data in every configuration: the losses show that they train alike.
                  last_loss=child["marks"][-1][4], glibc_tunables=child.get("glibc_tunables"),
                  torch=child["torch"], fairseq=child["fairseq"], python=child["python"])
    return record


def best_rounds(runs):
    """One record per configuration: its fastest round, with every round's tokens/s; failed if any failed."""
    records = collections.OrderedDict()
    for config, rounds in runs.items():
        failed = [r for r in rounds if not r.get("ok")]
        best = failed[0] if failed else max(rounds, key=lambda r: r["tokens_per_s"])
        records[config] = dict(best, rounds_tokens_per_s=[r.get("tokens_per_s") for r in rounds],
                               rounds_cpu_s_per_update=[r.get("cpu_s_per_update") for r in rounds])
    return records


def paired_overheads(records, config, base):
    """Per round, the share of `base`'s tokens/s that `config` loses; the two ran back to back in each round, so
    slow drifts of the host's load affect both."""
    a = records.get(config, {}).get("rounds_tokens_per_s") or []
    b = records.get(base, {}).get("rounds_tokens_per_s") or []
    return [round(1 - x / y, 4) for x, y in zip(a, b) if x and y]


def summarize(args, records, flops_per_token):
    """The results document: per-configuration numbers, `speedup` and, on CPU, `overhead`."""
    def rate(name):
        r = records.get(name)
        return r["tokens_per_s"] if r and r.get("ok") else None

    base, fast = rate(BASELINE[args.device]), rate("plugin-fast")
    ok = [r for r in records.values() if r.get("ok")]
    doc = collections.OrderedDict(
        device=ok[0]["device_name"] if ok else None, device_kind=args.device, preset=args.preset,
        date=datetime.date.today().isoformat(), updates=args.updates, warmup=args.warmup, rounds=args.rounds,
        log_interval=args.log_interval, host_malloc=args.host_malloc,
        baseline=BASELINE[args.device], speedup=round(fast / base, 3) if base and fast else None,
        over_baseline={name: round(rate(name) / base, 3) for name in records if base and rate(name)},
    )
    reference = rate(REFERENCE)
    if reference and fast:
        # What the fast path reaches of the same model's bare loop, in the same run.
        doc["fast_over_reference"] = round(fast / reference, 3)
    if args.device == "cpu":
        plugin = rate("plugin-fp32")
        doc["overhead"] = round(1 - plugin / base, 4) if base and plugin else None
        cost = [records.get(c, {}).get("cpu_s_per_update") for c in (BASELINE["cpu"], "plugin-fp32")]
        doc["overhead_cpu_time"] = round(cost[1] / cost[0] - 1, 4) if all(cost) else None
        rounds = paired_overheads(records, "plugin-fp32", base=BASELINE["cpu"])
        if len(rounds) > 1:
            doc["overhead_rounds"] = rounds
            doc["overhead_median_of_rounds"] = statistics.median(rounds)
    if hasattr(os, "getloadavg"):
        # Other work on the host shows here: a load above the core count makes CPU numbers noise.
        doc.update(cores=os.cpu_count(), load_avg_1m_at_end=round(os.getloadavg()[0], 2))
    doc.update(flops_per_token=flops_per_token, fast_flags=args.fast_flags,
               torch=ok[0]["torch"] if ok else None, fairseq=ok[0]["fairseq"] if ok else None,
               python=ok[0]["python"] if ok else None, all_ok=all(r.get("ok") for r in records.values()),
               configs=records)
    return doc


def report_lines(doc):
    """The table and the `speedup=` / `overhead=` lines printed at the end."""
    lines = ["%-18s %12s %7s %7s %9s %8s %12s %10s %9s %9s" % (
        "config", "tokens/s", "x base", "MFU", "peak GB", "counted", "median s/upd", "faults/upd", "process s",
        "last loss")]
    for name, r in doc["configs"].items():
        if not r.get("ok"):
            lines.append("%-18s FAILED: %s" % (name, r.get("error")))
            continue
        mfu = "%.1f%%" % (100 * r["mfu"]) if r["mfu"] is not None else "-"
        ratio = doc.get("over_baseline", {}).get(name)
        faults = r.get("faults_per_update")
        lines.append("%-18s %12.1f %7s %7s %9.3f %8d %12.4f %10s %9.1f %9.3f" % (
            name, r["tokens_per_s"], "%.3f" % ratio if ratio else "-", mfu, r["peak_mem_gb"], r["counted_updates"],
            r["median_update_s"], "-" if faults is None else faults, r["process_s"], r["last_loss"]))
    lines.append("device=%s host_malloc=%s" % (doc["device"], doc.get("host_malloc", "default")))
    lines.append("speedup=%s" % ("%.3f" % doc["speedup"] if doc["speedup"] is not None else "n/a"))
    if "fast_over_reference" in doc:
        lines.append("fast_over_reference=%.3f" % doc["fast_over_reference"])
    for key in ("overhead", "overhead_cpu_time", "overhead_median_of_rounds"):
        if key in doc:
            lines.append("%s=%s" % (key, "%+.1f%%" % (100 * doc[key]) if doc[key] is not None else "n/a"))
    return lines


def write_results(path, doc):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    try:
        fpt = model_flops_per_token(args)
    except Exception as e:  # MFU is optional: tokens/s is still worth measuring
        print("MFU unavailable: could not build the model here (%s)" % e, flush=True)
        fpt = None
    print("preset=%s device=%s updates=%d warmup=%d flops/token=%s host_malloc=%s configs=%s" % (
        args.preset, args.device, args.updates, args.warmup, "%.4g" % fpt if fpt else "n/a", args.host_malloc,
        ",".join(args.configs)), flush=True)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="train-throughput-")
    os.makedirs(log_dir, exist_ok=True)
    # Fairseq makes its checkpoint folder even with --no-save: keep it out of the logs and the repository.
    args.work_dir = tempfile.mkdtemp(prefix="train-throughput-work-")
    runs = collections.OrderedDict((c, []) for c in args.configs)
    for round_ in range(args.rounds):
        # Reversing every other round keeps a load that drifts during the run from favouring one position.
        for config in args.configs if round_ % 2 == 0 else args.configs[::-1]:
            print("running %s (round %d of %d) ..." % (config, round_ + 1, args.rounds), flush=True)
            name = config if args.rounds == 1 else "%s.round%d" % (config, round_ + 1)
            r = run_config(config, args, os.path.join(log_dir, name + ".log"), fpt)
            runs[config].append(r)
            if r["ok"]:
                print("  %s: %.1f tokens/s over %d updates (%.2f s), %.1f s in all" % (
                    config, r["tokens_per_s"], r["counted_updates"], r["seconds"], r["process_s"]), flush=True)
            else:
                print("  %s FAILED (%s); log %s, last lines:" % (
                    config, r["error"], os.path.join(log_dir, r["log"])), flush=True)
                for line in r.get("last_lines", []):
                    print("    | " + line, flush=True)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    doc = summarize(args, best_rounds(runs), fpt)
    write_results(args.out, doc)
    for line in report_lines(doc):
        print(line, flush=True)
    print("results: %s" % args.out, flush=True)
    return 0 if doc["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

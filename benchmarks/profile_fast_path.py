#!/usr/bin/env python
"""Where an update's time goes: one configuration of train_throughput.py (default: plugin-fast at the seed
preset), trained in this process, with `torch.profiler` around updates K+1..K+2 after warm-up.

Prints the device's busy time against the wall time and where it sat idle: each gap between its kernels, summed
by the Fairseq range the host was in (`forward`, `backward`, `clip-grads`, `optimizer`, or none), and the longest
gaps; then the kernels and operators that take the most device time, the host's CUDA runtime calls
(synchronizations among them), and dynamo's graph count and graph breaks.

    python benchmarks/profile_fast_path.py --device cuda --preset seed [--config plugin-fast] [--at 12]
"""
import argparse
import collections
import os
import sys
import time

# What torch.compile(mode="reduce-overhead") sets for CUDA graphs under the profiler (CUPTI's re-init and teardown
# crash with them); the plugin reaches inductor's CUDA graphs through its backend instead, so it is set here, before
# torch loads, for plugin-fast-graphs. Without CUDA graphs it changes nothing this one-shot profile needs.
os.environ.setdefault("DISABLE_CUPTI_LAZY_REINIT", "1")
os.environ.setdefault("TEARDOWN_CUPTI", "0")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402  (puts the repository on the path before Fairseq loads)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", default="seed")
    p.add_argument("--config", default="plugin-fast")
    p.add_argument("--at", type=int, default=12, help="profile the two updates after this many")
    p.add_argument("--rows", type=int, default=25)
    ours = p.parse_args()
    # A log line every 10 updates, as in the seed recipe: the profiled updates (--at + 1 and + 2; 13 and 14 by
    # default) are logging steps only where one of them is a multiple of 10.
    updates = max(20, -(-(ours.at + 3) // 10) * 10)
    bench = train_throughput.parse_args(["--device", ours.device, "--preset", ours.preset, "--updates",
                                         str(updates), "--warmup", "10", "--log-interval", "10"])
    argv = train_throughput.fairseq_args(ours.config, bench)

    import torch
    import torch._dynamo.utils

    import fairseq_cli.train

    from gpt2_hpu import adaptations

    adaptations.apply()
    from fairseq.trainer import Trainer

    activities = [torch.profiler.ProfilerActivity.CPU]
    if ours.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    sync = torch.cuda.synchronize if ours.device == "cuda" else (lambda: None)
    window = {}
    # Trainer.train_step is what every trainer class ends in; wrapping it times the whole update.
    train_step = Trainer.train_step

    def profiled(self, samples, raise_oom=False):
        done = self.get_num_updates()
        if done == ours.at:
            sync()
            window["start"] = time.perf_counter()
            profiler.start()
        out = train_step(self, samples, raise_oom)
        if done == ours.at + 1:
            sync()
            window["wall"] = time.perf_counter() - window["start"]
            profiler.stop()
        return out

    Trainer.train_step = profiled
    sys.argv = ["fairseq-train"] + argv
    fairseq_cli.train.cli_main()

    events = profiler.key_averages()
    attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    print(f"\nconfig={ours.config} updates profiled=2 wall={window['wall']:.3f}s")
    try:
        for line in timeline_report(device_timeline(profiler.events()), window["wall"]):
            print(line)
    except Exception as e:  # the tables below still say where the device time went
        print(f"device timeline unavailable: {type(e).__name__}: {e}")
    print(events.table(sort_by="self_" + attr, row_limit=ours.rows, max_name_column_width=70))
    # The host side of the CUDA runtime: a synchronize or a device-to-host copy is the host waiting for the
    # device; many launches show where the host's time goes.
    runtime = [e for e in events if e.key.startswith("cuda")]
    if runtime:
        print("CUDA runtime calls (host side):")
        for e in sorted(runtime, key=lambda e: -e.self_cpu_time_total)[:12]:
            print(f"  {e.key:<40} {e.count:8d} calls {e.self_cpu_time_total / 1e3:10.2f} ms")
    counters = torch._dynamo.utils.counters
    print("dynamo stats:", dict(counters["stats"]))
    print("graph breaks:", {k.splitlines()[0]: v for k, v in counters["graph_break"].items()})


def device_timeline(events):
    """Where the device was idle, from the profiler's events: the union of the device's own spans (kernels, copies,
    memsets; not the device-side copies of record_function ranges), and each gap between them with the host's
    innermost record_function range (Fairseq's "forward", "backward", "clip-grads", "optimizer", ...) at the
    gap's midpoint on the thread that ran the update."""
    device, ranges = [], []
    for e in events:
        start, end = e.time_range.start, e.time_range.end
        on_host = str(e.device_type).endswith("CPU")
        if on_host and getattr(e, "is_user_annotation", False):
            ranges.append((start, end, e.name, e.thread))
        elif not on_host and end > start and not getattr(e, "is_user_annotation", False):
            device.append((start, end, e.name))
    # A range's device-side copy that the profiler did not flag: it spans the range's kernels, not one of its own.
    names = {n for _, _, n, _ in ranges}
    device = [d for d in device if d[2] not in names]
    if not device:
        return None
    device.sort()
    first, reach = device[0][0], device[0][1]
    busy, gaps = reach - first, []
    for start, end, name in device[1:]:
        if start > reach:
            gaps.append((reach, start, name))
            busy, reach = busy + end - start, end
        elif end > reach:
            busy, reach = busy + end - reach, end
    threads = collections.Counter(t for _, _, _, t in ranges)
    main_thread = threads.most_common(1)[0][0] if threads else None
    ranges = [(s, e, n) for s, e, n, t in ranges if t == main_thread]

    def region(t):
        inside = [(e - s, n) for s, e, n in ranges if s <= t <= e]
        return min(inside)[1] if inside else "(outside Fairseq's ranges: the trainer's own Python, the data)"

    gaps = [(a, b, nxt, region((a + b) / 2)) for a, b, nxt in gaps]
    return {"first": first, "last": reach, "busy_us": busy, "gaps": gaps}


def timeline_report(timeline, wall_s):
    if timeline is None:
        return ["device timeline: no device events (a CPU run)"]
    span = (timeline["last"] - timeline["first"]) / 1e6
    idle = sum(b - a for a, b, _, _ in timeline["gaps"]) / 1e6
    lines = [f"device timeline: busy {timeline['busy_us'] / 1e6:.3f} s of {wall_s:.3f} s wall "
             f"({100 * timeline['busy_us'] / 1e6 / wall_s:.0f}%); between its first and last kernel "
             f"{span:.3f} s, idle {idle:.3f} s in {len(timeline['gaps'])} gaps"]
    by_region = collections.defaultdict(lambda: [0.0, 0])
    for a, b, _, where in timeline["gaps"]:
        by_region[where][0] += b - a
        by_region[where][1] += 1
    lines.append("idle time by the host's range at the gap (ms, gaps):")
    for where, (us, n) in sorted(by_region.items(), key=lambda kv: -kv[1][0])[:10]:
        lines.append(f"  {where:<60} {us / 1e3:9.2f} ms {n:7d}")
    lines.append("longest gaps (start ms from the first kernel, length us, host range, the kernel after):")
    for a, b, nxt, where in sorted(timeline["gaps"], key=lambda g: g[0] - g[1])[:10]:
        lines.append(f"  {(a - timeline['first']) / 1e3:9.2f} {b - a:9.1f}  {where[:40]:<40} {nxt[:60]}")
    return lines


if __name__ == "__main__":
    main()

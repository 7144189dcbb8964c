#!/usr/bin/env python
"""Where an update's time goes: one configuration of train_throughput.py (default: plugin-fast at the seed
preset), trained in this process, with `torch.profiler` around updates K+1..K+2 after warm-up.

Prints the device time per update against the wall time (the gap is time the device waited for the host),
the kernels and operators that take the most device time, and dynamo's graph count and graph breaks.

    python benchmarks/profile_fast_path.py --device cuda --preset seed [--config plugin-fast] [--at 12]
"""
import argparse
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
    # record_function ranges (Fairseq's "forward", the optimizer's step) also report device time: count
    # kernels and operators only.
    kernels = sum(getattr(e, "self_" + attr, 0) for e in events if not getattr(e, "is_user_annotation", False)
                  and not e.key.startswith(("train_step", "forward", "Optimizer."))) / 1e6
    print(f"\nconfig={ours.config} updates profiled=2 wall={window['wall']:.3f}s "
          f"device busy (sum of self device time)={kernels:.3f}s ({100 * kernels / window['wall']:.0f}% of wall)")
    print(events.table(sort_by="self_" + attr, row_limit=ours.rows, max_name_column_width=70))
    counters = torch._dynamo.utils.counters
    print("dynamo stats:", dict(counters["stats"]))
    print("graph breaks:", {k.splitlines()[0]: v for k, v in counters["graph_break"].items()})


if __name__ == "__main__":
    main()

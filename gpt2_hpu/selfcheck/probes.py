"""The device side of the selfcheck: each probe runs in a child process of its own, talks to the HPU only
through `gpt2_hpu.device.HpuDevice`, and prints one result line (children.RESULT_PREFIX + JSON).

A probe that finds something wrong raises CheckFailed, whose message is the cause shown in the table.
Run as: python -c "from gpt2_hpu.selfcheck.probes import main; main()" PROBE [ARGS...]
"""
import json
import os
import sys

from gpt2_hpu.selfcheck.children import RESULT_PREFIX

MIB = 2 ** 20


class CheckFailed(Exception):
    pass


def _device():
    from gpt2_hpu.device import HpuDevice

    return HpuDevice()  # the mode comes from PT_HPU_LAZY_MODE, which the selfcheck sets per child


def _mode(device):
    return "lazy" if device.lazy else "eager"


def bridge_location():
    """Where `habana_frameworks` was loaded from (a Gaudi image's site-packages, or a stand-in)."""
    module = sys.modules.get("habana_frameworks")
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.dirname(path)) if path else None


def probe_device():
    """Versions, card count, default mode, card name (the name acquires a card: fine in a child)."""
    import torch

    device = _device()
    count = device.device_count()
    return {"torch": torch.__version__, "bridge": device.bridge_version(), "bridge_location": bridge_location(),
            "count": count, "mode": _mode(device), "lazy_env": os.environ.get("PT_HPU_LAZY_MODE"),
            "name": device.name() if count else None}


def probe_mark_step(mode):
    """The mode PT_HPU_LAZY_MODE asked for is the bridge's mode, and a small graph computes the right value."""
    import torch

    device = _device()
    if _mode(device) != mode:
        raise CheckFailed(f"PT_HPU_LAZY_MODE={os.environ.get('PT_HPU_LAZY_MODE')} but the bridge runs in "
                          f"{_mode(device)} mode")
    x = torch.arange(1, 9, dtype=torch.float32, device=device.torch_device)
    y = (x * 2 - 1).sum()
    before = device.mark_steps
    device.mark_step()
    device.synchronize()
    calls = device.mark_steps - before
    value = y.to("cpu").item()
    if value != 64.0:
        raise CheckFailed(f"(2x - 1).sum() over 1..8 gave {value} after mark_step, expected 64.0")
    if y.device.type != device.torch_device.type:
        raise CheckFailed(f"the result lives on {y.device}, not on {device.torch_device}")
    # Lazy mode needs the mark_step to run the graph; eager mode has none, so HpuDevice must not call it.
    if calls != (1 if mode == "lazy" else 0):
        raise CheckFailed(f"{calls} mark_step calls reached the bridge in {mode} mode")
    return {"mode": mode, "device": str(y.device), "bridge_calls": calls}


def probe_hccl(world_size):
    """One process per card, as a training job starts them: hccl all-reduce (SUM) and all-gather."""
    import torch.multiprocessing

    from gpt2_hpu.distributed import free_port

    world_size = int(world_size)
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = str(free_port())
    torch.multiprocessing.spawn(_hccl_rank, args=(world_size,), nprocs=world_size, join=True)
    return {"world_size": world_size}


def _hccl_rank(rank, world_size):
    import datetime

    import torch
    import torch.distributed as dist

    device = _device()
    device.initialize_distributed(world_size, rank, rank)
    dist.init_process_group(device.distributed_backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        summed = torch.full((4,), float(rank + 1), device=device.torch_device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        device.mark_step()
        got, want = summed.to("cpu"), world_size * (world_size + 1) / 2
        if not bool((got == want).all()):
            raise CheckFailed(f"rank {rank}: all_reduce SUM of 1..{world_size} gave {_show(got)}, expected {want}")

        mine = torch.arange(3, dtype=torch.float32, device=device.torch_device) + 100 * rank
        gathered = [torch.zeros(3, dtype=torch.float32, device=device.torch_device) for _ in range(world_size)]
        dist.all_gather(gathered, mine)
        device.mark_step()
        for source, tensor in enumerate(gathered):
            got, want = tensor.to("cpu"), torch.arange(3, dtype=torch.float32) + 100 * source
            if not torch.equal(got, want):
                raise CheckFailed(f"rank {rank}: all_gather slot {source} holds {got.tolist()}, "
                                  f"expected {want.tolist()}")
    finally:
        dist.destroy_process_group()


def _show(tensor):
    values = tensor.tolist()
    return values[0] if len(set(values)) == 1 else values


def probe_memory(mebibytes):
    """A tensor of known size shows up in the HPU's memory counters and leaves them when freed."""
    import torch

    size = int(mebibytes) * MIB
    device = _device()
    before = device.memory_allocated()
    block = torch.ones(size // 4, dtype=torch.float32, device=device.torch_device)
    device.mark_step()  # lazy mode: the tensor exists on the card only once its graph has run
    device.synchronize()
    held = device.memory_allocated()
    peak = device.max_memory_allocated()
    stats = device.memory_stats()
    missing = [k for k in ("Limit", "InUse", "MaxInUse") if k not in stats]
    if missing:
        raise CheckFailed(f"memory_stats() lacks {', '.join(missing)}: it has {sorted(stats)}")
    # 90%: an allocator may round, and other allocations may come and go in between.
    if held - before < 0.9 * size:
        raise CheckFailed(f"a {mebibytes} MiB tensor raised memory_allocated() by only "
                          f"{(held - before) / MIB:.1f} MiB")
    if peak < held:
        raise CheckFailed(f"max_memory_allocated() {peak} is below memory_allocated() {held}")
    del block
    device.mark_step()
    device.synchronize()
    after = device.memory_allocated()
    if held - after < 0.9 * size:
        raise CheckFailed(f"freeing the {mebibytes} MiB tensor lowered memory_allocated() by only "
                          f"{(held - after) / MIB:.1f} MiB")
    return {"mode": _mode(device), "grew_mib": (held - before) / MIB, "freed_mib": (held - after) / MIB,
            "in_use": after, "peak": device.max_memory_allocated(), "limit": int(stats["Limit"])}


def probe_compare(first, second, threshold):
    """Element-wise comparison of two Fairseq checkpoints' model tensors (CPU only; no device needed)."""
    import torch

    a = torch.load(first, map_location="cpu", weights_only=False)
    b = torch.load(second, map_location="cpu", weights_only=False)
    ma, mb = a["model"], b["model"]
    if sorted(ma) != sorted(mb):
        raise CheckFailed(f"the two checkpoints hold different parameters: {sorted(set(ma) ^ set(mb))}")
    threshold = float(threshold)
    total = differing = 0
    worst, worst_name = 0.0, None
    for name in ma:
        diff = (ma[name].float() - mb[name].float()).abs()
        total += diff.numel()
        differing += int((diff > threshold).sum())
        if diff.numel() and diff.max().item() > worst:
            worst, worst_name = diff.max().item(), name
    return {"numel": total, "differing": differing, "max_abs": worst, "worst": worst_name,
            "updates": [s["optimizer_history"][-1]["num_updates"] for s in (a, b)]}


PROBES = {"device": probe_device, "mark_step": probe_mark_step, "hccl": probe_hccl, "memory": probe_memory,
          "compare": probe_compare}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    result = PROBES[argv[0]](*argv[1:])
    print(RESULT_PREFIX + json.dumps(result), flush=True)

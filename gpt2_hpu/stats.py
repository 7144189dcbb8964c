"""An update's numbers without host syncs: gradient clipping on the device, and the per-update metrics.

Reading a device value on the host (`.item()`, `bool(t)`, `.cpu()`) waits for all queued device work, and
on a Gaudi in lazy mode it also cuts and runs the graph. So these keep every value on the device; Fairseq's
meters hold tensors and read them only when a logging step prints them.
"""
import torch

from fairseq import metrics


def clip_grad_norm(params, max_norm):
    """The total L2 norm of the gradients (float32, on their device), and the gradients scaled to at most
    `max_norm` when it is > 0; the same values as Fairseq's `utils.clip_grad_norm_`."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]), 2.0)
    if max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale)
    return total


def zero_in_place(params, grads):
    """Gives each parameter its gradient buffer back (`grads[i]`, or a new one where it had none), zeroed, so that
    gradients accumulate in memory of their own from an update's first micro-batch on."""
    present = [g for g in grads if g is not None]
    if present:
        torch._foreach_zero_(present)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g


def log_update(grad_norm, clip_norm):
    """What Fairseq logs for every update, minus its host reads."""
    metrics.log_speed("ups", 1.0, priority=100, round=2)
    metrics.log_scalar("gnorm", grad_norm, priority=400, round=3)
    if clip_norm > 0:
        clipped = (grad_norm > clip_norm).to(torch.float32) * 100.0
        metrics.log_scalar("clip", clipped, priority=500, round=1)


def tokens_in(samples):
    """Tokens of an update, from the batches' host-side counts."""
    return sum(int(s.get("ntokens", 0)) for s in samples if s)


def sum_logging_outputs(logging_outputs, extra_stats, ignore, reduce_host, reduce_device):
    """Fairseq's summed statistics across ranks, split by where each value lives: host numbers (token and
    sentence counts, sample size, timings) are summed by `reduce_host` over a host group and stay Python
    numbers; device tensors (losses) are summed by `reduce_device` in one device buffer and stay there. So the
    sum costs no device sync, where one buffer holding both would bring the device values to the host (or the
    host values to the device, whose every use as a number is then a sync)."""
    named = [(("extra", i), stat) for i, stat in enumerate(extra_stats)]
    log_keys = list(logging_outputs[0].keys()) if logging_outputs else None
    for key in log_keys or []:
        if ignore:
            value = logging_outputs[0][key]
            value = torch.zeros_like(value) if torch.is_tensor(value) else 0
        else:
            value = sum(log[key] for log in logging_outputs if key in log)
        named.append((("log", key), value))
    on_device = [(name, v) for name, v in named if torch.is_tensor(v) and v.device.type != "cpu"]
    on_host = [(name, v) for name, v in named if not (torch.is_tensor(v) and v.device.type != "cpu")]
    reduced = {}
    if on_host:
        sums = reduce_host(torch.tensor([float(v) for _, v in on_host], dtype=torch.float64)).tolist()
        reduced.update((name, _as_number(s, v)) for (name, v), s in zip(on_host, sums))
    if on_device:
        sums = reduce_device(torch.stack([v.detach().reshape(()) for _, v in on_device]))
        reduced.update((name, s) for (name, _), s in zip(on_device, sums.unbind(0)))
    extra = [reduced[("extra", i)] for i in range(len(extra_stats))]
    outputs = [{k: reduced[("log", k)] for k in log_keys}] if log_keys is not None else []
    return outputs, extra


def _as_number(total, original):
    return int(round(total)) if isinstance(original, int) and not isinstance(original, bool) else total

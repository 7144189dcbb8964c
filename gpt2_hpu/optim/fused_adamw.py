"""`--optimizer fused_adamw`: Fairseq `adam`'s update rule, computed by fused multi-tensor kernels.

Fairseq's `adam` (its pure-Python `Adam` off CUDA) loops over parameters one tensor at a time. Its rule is
AdamW with eps added to the un-corrected sqrt(v):

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p (1 - lr wd) - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

Habana's `FusedAdamW` (with `bias_correction=True`) computes exactly this. torch's `AdamW` divides by
`sqrt(v) / sqrt(1 - b2^t) + eps` instead, which is the same rule with eps scaled by `sqrt(1 - b2^t)`, so
`FairseqRuleAdamW` hands it `eps / sqrt(1 - b2^t)` for each step. Weight decay is decoupled in all three
(`p (1 - lr wd)` before the Adam step), so it needs nothing.

The flags are `adam`'s, so `--optimizer fused_adamw` is a drop-in replacement, checkpoints included (not across
the two: Fairseq refuses to load one optimizer's state into another).
"""
import ast
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.distributed as dist
from omegaconf import II, OmegaConf

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer

__all__ = ["FusedAdamWConfig", "FairseqFusedAdamW", "FairseqRuleAdamW", "device_skip"]

HOST_STEP = "host_step"  # param-group key: the steps taken, counted on the host


@dataclass
class FusedAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    use_old_adam: bool = field(
        default=False, metadata={"help": "accepted for compatibility with --optimizer adam; has no effect"})
    fp16_adam_stats: bool = field(
        default=False, metadata={"help": "not supported by fused_adamw (accepted, refused when set)"})
    tpu: bool = II("common.tpu")
    lr: List[float] = II("optimization.lr")
    hpu: bool = II("common.hpu")


def _fused_devices():
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ("cuda",)
    return tuple(_get_fused_kernels_supported_devices())


def _kernel_choice(params):
    """`fused=True` where every parameter's device has torch's fused AdamW kernel, else `foreach=True`."""
    devices = _fused_devices()
    if params and all(p.device.type in devices and torch.is_floating_point(p) for p in params):
        return {"fused": True, "foreach": None}
    return {"fused": None, "foreach": True}


def _param_list(params):
    params = list(params)
    if params and isinstance(params[0], dict):
        return params, [p for group in params for p in group["params"]]
    return params, params


class FairseqRuleAdamW(torch.optim.AdamW):
    """torch's `AdamW` (fused or multi-tensor) that follows Fairseq `adam`'s eps placement.

    Each step sets every group's `eps` to `eps / sqrt(1 - beta2^t)` for that step only, `t` being the group's
    step count kept on the host in `param_group["host_step"]`: reading torch's own step tensors would wait for
    the device. The count travels in the state dict with the group (and through ZeRO's group syncing); a state
    dict without it (from a plain `AdamW`) sets it, once, from the per-parameter step. Counting per group
    assumes that a step either updates every parameter of a group or none, as in language-model training where
    every parameter gets a gradient.

    On torch's fused kernels a step can also be skipped on the device (`skip_next_step_where`), as torch's
    GradScaler skips one: the host does not need to know whether it was.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=None, foreach=None):
        params, flat = _param_list(params)
        if fused is None and foreach is None:
            kernel = _kernel_choice(flat)
        else:
            kernel = {"fused": fused, "foreach": foreach}
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)
        for group in self.param_groups:
            group.setdefault(HOST_STEP, 0)
        self._last_counted = []  # the groups whose host step count the last step raised

    @property
    def supports_flat_params(self):
        return True

    @property
    def supports_memory_efficient_fp16(self):
        # Moments and update math would stay in fp16; Fairseq's own Adam keeps them in fp32.
        return False

    @property
    def can_skip_on_device(self):
        return bool(self.param_groups) and all(group.get("fused") for group in self.param_groups)

    def skip_next_step_where(self, flag):
        """The next step leaves parameters, moments and step tensors as they are where `flag` (a float32 scalar
        on the parameters' device) is 1. torch's fused kernels read it as `found_inf`, the attribute torch's
        GradScaler sets; the other kernels cannot (`can_skip_on_device`)."""
        if not self.can_skip_on_device:
            raise RuntimeError("only torch's fused AdamW kernels can skip a step on the device")
        self.found_inf = flag

    def uncount_last_step(self):
        """Takes back the host step count of the last step, for a step that the device skipped."""
        for group in self._last_counted:
            group[HOST_STEP] -= 1
        self._last_counted = []

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        eps = [group["eps"] for group in self.param_groups]
        self._last_counted = []
        try:
            for group in self.param_groups:
                if any(p.grad is not None for p in group["params"]):
                    group[HOST_STEP] += 1
                    self._last_counted.append(group)
                    beta2 = group["betas"][1]
                    group["eps"] = group["eps"] / math.sqrt(1.0 - beta2 ** group[HOST_STEP])
            super().step()
        finally:
            # Outside a step `eps` is Fairseq's: state dicts, checkpoint overrides and ZeRO see that value.
            for group, value in zip(self.param_groups, eps):
                group["eps"] = value
            self.__dict__.pop("found_inf", None)  # for one step only
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if HOST_STEP not in group:
                steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, {})]
                group[HOST_STEP] = int(max((float(s) for s in steps), default=0))


@register_optimizer("fused_adamw", dataclass=FusedAdamWConfig)
class FairseqFusedAdamW(FairseqOptimizer):
    """Fairseq `adam`'s rule and flags on fused kernels: Habana's `FusedAdamW` with `--hpu`, otherwise
    `FairseqRuleAdamW` (torch's fused `AdamW` where the device has it, else its multi-tensor `foreach` form)."""

    def __init__(self, cfg, params):
        super().__init__(cfg)
        if getattr(cfg, "fp16_adam_stats", False):
            raise ValueError("--fp16-adam-stats is not supported by --optimizer fused_adamw; use --optimizer adam")
        if _config_flag(cfg, "hpu"):
            from gpt2_hpu import device

            fused_adamw = device.activate().fused_adamw_class()
            self._optimizer = fused_adamw(params, bias_correction=True, **self.optimizer_config)
        else:
            self._optimizer = FairseqRuleAdamW(params, **self.optimizer_config)

    @property
    def optimizer_config(self):
        """The torch optimizer's arguments; Fairseq also applies them over a loaded checkpoint's groups."""
        lr = self.cfg.lr
        betas = self.cfg.adam_betas
        if isinstance(betas, str):  # the command line gives "(0.9, 0.999)"
            betas = ast.literal_eval(betas)
        elif OmegaConf.is_config(betas):
            betas = OmegaConf.to_container(betas)
        return {
            "lr": lr[0] if isinstance(lr, Collection) else lr,
            "betas": tuple(betas),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }

    @property
    def supports_flat_params(self):
        return True

    def average_params(self):
        """Averages the Adam moments over all ranks (Fairseq's BMUF training asks for it)."""
        world_size = float(dist.get_world_size())
        for state in self.optimizer.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].div_(world_size)
                    dist.all_reduce(state[key], op=dist.ReduceOp.SUM)


class _DeviceSkip:
    """Where a FairseqFusedAdamW runs on torch's fused kernels: its next step skipped on the device where a flag
    says so, and the host's step count taken back afterwards for a step that was."""

    def __init__(self, local, shown_groups):
        self._local = local
        # ZeRO shows its own copies of the groups and copies the local ones' settings into them after each step.
        self._shown_groups = shown_groups

    def skip_next_step_where(self, flag):
        self._local.skip_next_step_where(flag)

    def uncount_last_step(self):
        self._local.uncount_last_step()
        for shown, local in zip(self._shown_groups, self._local.param_groups):
            shown[HOST_STEP] = local[HOST_STEP]


def device_skip(fairseq_optimizer):
    """What skips `fairseq_optimizer`'s steps on the device, or None where it cannot: anything but
    `--optimizer fused_adamw` on torch's fused kernels (Habana's FusedAdamW takes no such flag), ZeRO-sharded or
    not."""
    if not isinstance(fairseq_optimizer, FairseqFusedAdamW):
        return None
    torch_optimizer = fairseq_optimizer.optimizer
    local = getattr(torch_optimizer, "optim", torch_optimizer)  # ZeRO keeps this rank's shard's optimizer there
    if not isinstance(local, FairseqRuleAdamW) or not local.can_skip_on_device:
        return None
    return _DeviceSkip(local, torch_optimizer.param_groups if local is not torch_optimizer else [])


def _config_flag(cfg, name):
    """A boolean config field that may be an interpolation Fairseq cannot resolve (a config built without the
    plugin's `common.hpu`): unresolved counts as off."""
    try:
        return bool(getattr(cfg, name, False))
    except Exception:
        return False

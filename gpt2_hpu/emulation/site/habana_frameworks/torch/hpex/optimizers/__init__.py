"""Emulated `habana_frameworks.torch.hpex.optimizers.FusedAdamW` (same signature, defaults and update rule)."""
import math

import torch

from habana_frameworks.torch.core.step_closure import mark_step

__all__ = ["FusedAdamW"]


class FusedAdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam with Hugging Face-style eps (added to the un-corrected sqrt(v)).

    The step count lives in `param_group["step"]`; per-parameter `state["step"]` stays 0, as on Gaudi.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, bias_correction=True,
                 moments_dtype=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr} - should be >= 0.0")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[0]} - should be in [0.0, 1.0)")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[1]} - should be in [0.0, 1.0)")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps} - should be >= 0.0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction)
        super().__init__(params, defaults)
        if isinstance(moments_dtype, (tuple, list)):
            self.moments_dtype = tuple(moments_dtype)
        else:
            self.moments_dtype = (moments_dtype, moments_dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mark_step()
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            bias_correction = group.get("bias_correction", group.get("correct_bias", True))
            if bias_correction:
                step_size = lr * math.sqrt(1.0 - beta2 ** group["step"]) / (1.0 - beta1 ** group["step"])
            else:
                step_size = lr
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.moments_dtype[0] or p.dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.moments_dtype[1] or p.dtype)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad
                exp_avg.mul_(beta1).add_(grad.to(exp_avg.dtype), alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad.to(exp_avg_sq.dtype), grad.to(exp_avg_sq.dtype),
                                                value=1.0 - beta2)
                if 1.0 - lr * wd != 1.0:
                    p.mul_(1.0 - lr * wd)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                p.add_(update.to(p.dtype) * torch.tensor(-step_size, dtype=p.dtype))
        mark_step()
        return loss

"""Emulated `habana_frameworks.torch.hpex.normalization.FusedClipNorm` (L2 norm only)."""
import torch

from gpt2_hpu.emulation import DEVICE
from habana_frameworks.torch.core.step_closure import mark_step

__all__ = ["FusedClipNorm"]


class FusedClipNorm:
    def __init__(self, parameters, max_norm):
        params = list(parameters)
        self.dtype = params[0].dtype if params else torch.float32
        self.norm_type = 2.0
        self.max_norm_t = torch.tensor([float(max_norm)], dtype=self.dtype, device=DEVICE)  # the bridge: on the HPU

    def clip_norm(self, parameters):
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        mark_step()
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2.0) for g in grads])
        total_norm = torch.linalg.vector_norm(norms, 2.0).reshape(1)
        clip_coef = self.max_norm_t.to(total_norm.dtype) / (total_norm + 1e-6)
        scale = torch.where(total_norm > self.max_norm_t.to(total_norm.dtype), clip_coef, torch.ones_like(clip_coef))
        for g in grads:
            g.detach().mul_(scale.to(g.dtype))
        mark_step()
        return total_norm

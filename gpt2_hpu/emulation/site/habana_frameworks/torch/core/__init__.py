"""Emulated `habana_frameworks.torch.core`.

Import side effects, as in the bridge: registers `torch.hpu` and makes `torch.manual_seed` seed the HPU
generator too.
"""
import torch

from habana_frameworks.torch.utils.internal import is_lazy  # noqa: F401  (re-exported like the bridge)
from .step_closure import add_step_closure, iter_mark_step, mark_step  # noqa: F401
from habana_frameworks.torch import hpu as _hpu

if getattr(torch, "hpu", None) is not _hpu:
    torch._register_device_module("hpu", _hpu)

if not getattr(torch.manual_seed, "_seeds_hpu", False):
    _torch_manual_seed = torch.manual_seed

    def manual_seed(seed):
        generator = _torch_manual_seed(seed)
        _hpu.random.manual_seed(seed)
        return generator

    manual_seed._seeds_hpu = True
    torch.manual_seed = manual_seed

"""Emulated `habana_frameworks.torch.core`.

Import side effects, as in the bridge: registers `torch.hpu` (and, in eager mode, the `hpu_backend`
torch.compile backend), makes `torch.manual_seed` seed the HPU
generator too, and wraps `torch.save`/`torch.load` so HPU tensors are pickled from the host and
`map_location` may name the HPU.
"""
import torch
from torch.utils._pytree import tree_map

from gpt2_hpu.emulation import DEVICE
from gpt2_hpu.emulation.device import HpuTensor
from habana_frameworks.torch import hpu as _hpu
from habana_frameworks.torch.utils.internal import is_lazy  # noqa: F401  (re-exported like the bridge)

from .step_closure import add_step_closure, iter_mark_step, mark_step  # noqa: F401

if getattr(torch, "hpu", None) is not _hpu:
    torch._register_device_module("hpu", _hpu)

if not is_lazy():
    from habana_frameworks.torch.dynamo.compile_backend import backends as _backends  # noqa: F401  (hpu_backend)

if not getattr(torch.manual_seed, "_seeds_hpu", False):
    _torch_manual_seed = torch.manual_seed

    def manual_seed(seed):
        generator = _torch_manual_seed(seed)
        _hpu.random.manual_seed(seed)
        return generator

    manual_seed._seeds_hpu = True
    torch.manual_seed = manual_seed


def _is_hpu_location(location):
    if isinstance(location, str):
        location = location.split(":")[0]
        return location in ("hpu", DEVICE.type)
    return isinstance(location, torch.device) and location.type in ("hpu", DEVICE.type)


if not getattr(torch.save, "_hpu_aware", False):
    _torch_save, _torch_load = torch.save, torch.load

    def save(obj, *args, **kwargs):
        return _torch_save(tree_map(lambda t: t.cpu() if isinstance(t, HpuTensor) else t, obj), *args, **kwargs)

    def load(f, map_location=None, *args, **kwargs):
        if not _is_hpu_location(map_location):
            return _torch_load(f, map_location, *args, **kwargs)
        obj = _torch_load(f, "cpu", *args, **kwargs)
        return tree_map(lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t, obj)

    save._hpu_aware = load._hpu_aware = True
    torch.save, torch.load = save, load

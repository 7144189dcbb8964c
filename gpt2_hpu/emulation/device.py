"""The emulated HPU as a device of its own.

A Gaudi refuses what lives on the host: an op that mixes HPU tensors with host tensors, a model fed a batch that
was never moved, a collective given host memory. Emulated tensors must be refused the same way, so they cannot
simply be CPU tensors. Each one is an `HpuTensor`: a tensor subclass that reports its own device and keeps its
values in a host tensor (`host_data`), the way PyTorch's FakeTensor reports a device it does not use.

Which device type to report. Stock PyTorch builds without CUDA can only run autograd on device types that have
a device guard compiled in: cpu, meta and lazy. `hpu` has none (autograd aborts with "PyTorch is not linked
with support for hpu devices"), PrivateUse1 gets a Python guard only from torch 2.9, and `meta` is used by
PyTorch itself. So the emulated HPU reports torch's `lazy` device type, which nothing here uses otherwise;
torch's own lazy-tensor backend is never initialised. `gpt2_hpu.device.HpuDevice` is the one place that maps
"the HPU" to this device.

What it models:
- placement: every op except copies (`copy_`, `.to()`) and indexing with host indices refuses a mix of HPU and
  host tensors, 0-dim host tensors aside (scalars, accepted by every accelerator), with the message CUDA gives;
- factories: `torch.empty/zeros/arange/randn(..., device=<the HPU>)` and `tensor.to(<the HPU>)` create HPU
  tensors;
- random numbers: random ops on HPU tensors draw from the HPU generator (`torch.hpu.get_rng_state`), never the
  CPU's, as on a Gaudi (dropout included).
- host reads: every value read back to the host is counted (`host_reads()`), since each is a device sync.
What it does not: speed, memory limits, graph compilation (torch.compile runs the model eagerly), autocast
(`torch.autocast("hpu")` is accepted and computes in fp32), dtype support (int64 and float64 run as on the
CPU), numerical differences of Gaudi kernels.
"""
import torch

from gpt2_hpu.emulation import DEVICE

_HOST = torch.device("cpu")
_aten = torch.ops.aten

# Ops that legitimately take tensors from both sides: copies between devices, and indexing with host indices
# (PyTorch moves index tensors to the indexed tensor's device).
_CROSS_DEVICE = {
    _aten.copy_.default,
    _aten._to_copy.default,
    _aten.index.Tensor,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}


class HpuTensor(torch.Tensor):
    """A tensor on the emulated HPU; its values live in the host tensor `host_data`."""

    @staticmethod
    def __new__(cls, host_data, requires_grad=False):
        return torch.Tensor._make_wrapper_subclass(
            cls, host_data.size(), strides=host_data.stride(), storage_offset=host_data.storage_offset(),
            dtype=host_data.dtype, layout=host_data.layout, device=DEVICE, requires_grad=requires_grad)

    def __init__(self, host_data, requires_grad=False):
        self.host_data = host_data

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self, *, tensor_contents=None):
        text = repr(self.host_data)
        return text[:-1] + ", device='hpu:0 (emulated)')" if text.endswith(")") else text

    def tolist(self):
        # A device-to-host copy, as for any accelerator tensor (torch refuses tolist() on subclasses).
        global _host_reads
        _host_reads += 1
        return self.host_data.tolist()

    # Lets torch swap whole tensors (Module._apply) instead of re-pointing metadata, which would leave
    # `host_data` behind.
    def __tensor_flatten__(self):
        return ["host_data"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return HpuTensor(inner["host_data"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run_outside_compile(func, args, kwargs or {})


def _placement_error(func_name, host):
    return RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, hpu:0 and "
        f"{host.device}! (emulated HPU: {func_name} was given a host tensor of shape {tuple(host.shape)}; "
        "move it to the HPU first)")


def _tensors(values):
    """The tensors among op arguments (aten ops nest them at most one list deep: cat, index, ...)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            for w in v:
                if isinstance(w, torch.Tensor):
                    yield w


def _unwrap(v):
    if isinstance(v, HpuTensor):
        return v.host_data
    if isinstance(v, (list, tuple)) and any(isinstance(w, HpuTensor) for w in v):
        return type(v)(w.host_data if isinstance(w, HpuTensor) else w for w in v)
    return v


_host_reads = 0


def host_reads():
    """How many times a value went from the emulated HPU to the host (`.item()`, `bool()`, `.cpu()`, copies to
    host tensors): each one is a device sync on a Gaudi, and in lazy mode also runs the pending graph."""
    return _host_reads


def _count_host_read(func, args, kwargs):
    global _host_reads
    if func is _aten._local_scalar_dense.default:
        _host_reads += isinstance(args[0], HpuTensor)
    elif func is _aten._to_copy.default:
        target = kwargs.get("device")
        to_host = target is not None and torch.device(target).type != DEVICE.type
        _host_reads += isinstance(args[0], HpuTensor) and to_host
    elif func is _aten.copy_.default:
        _host_reads += not isinstance(args[0], HpuTensor) and isinstance(args[1], HpuTensor)


def _run(func, args, kwargs):
    _count_host_read(func, args, kwargs)
    tensors = list(_tensors(args))
    tensors.extend(_tensors(kwargs.values()))
    if func not in _CROSS_DEVICE:
        for t in tensors:
            if not isinstance(t, HpuTensor) and t.dim() > 0:
                raise _placement_error(str(func.overloadpacket.__name__), t)
    target = kwargs.get("device")
    if target is not None:
        target = torch.device(target)
        on_hpu = target.type == DEVICE.type
        if on_hpu:
            kwargs = dict(kwargs, device=_HOST)
    else:
        on_hpu = any(isinstance(t, HpuTensor) for t in tensors)

    host_args = [_unwrap(a) for a in args]
    host_kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
    if on_hpu and torch.Tag.nondeterministic_seeded in func.tags and host_kwargs.get("generator") is None:
        out = _with_hpu_generator(func, host_args, host_kwargs)
    else:
        out = func(*host_args, **host_kwargs)
    if not on_hpu:
        return out

    # In-place and out= ops return their input: hand back the same HpuTensor, not a new wrapper.
    inputs = {id(t.host_data): t for t in tensors if isinstance(t, HpuTensor)}

    def wrap(x):
        if isinstance(x, torch.Tensor) and not isinstance(x, HpuTensor):
            same = inputs.get(id(x))
            return same if same is not None else HpuTensor(x)
        return x

    if isinstance(out, (list, tuple)):
        return type(out)(wrap(x) for x in out)
    return wrap(out)


# torch.compile must not trace the emulator's own Python (it would compile the emulation, not the model).
_run_outside_compile = torch.compiler.disable(lambda func, args, kwargs: _run(func, args, kwargs))


def _with_hpu_generator(func, args, kwargs):
    """Runs a random op with the HPU generator's state in place of the CPU's, then puts both back."""
    from habana_frameworks.torch.hpu import random as hpu_random

    generator = hpu_random.generator()
    cpu_state = torch.random.default_generator.get_state()
    torch.random.default_generator.set_state(generator.get_state())
    try:
        return func(*args, **kwargs)
    finally:
        generator.set_state(torch.random.default_generator.get_state())
        torch.random.default_generator.set_state(cpu_state)


def _acquire_card():
    from habana_frameworks.torch import hpu

    hpu.init()  # the first tensor on the device acquires a card, as on a Gaudi


def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    _acquire_card()
    return HpuTensor(torch.empty(size, dtype=dtype, layout=layout, memory_format=memory_format))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    _acquire_card()
    return HpuTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout))


def _copy_from(src, dst, non_blocking=False):
    # Reached where PyTorch copies with Python dispatch switched off (torch.tensor(..., device=...)).
    dst.host_data.copy_(_unwrap(src))
    return dst


def _narrow_parameter_subclass_checks():
    """torch before 2.5 counts a tensor subclass flagged as a parameter as an instance of every Parameter
    subclass, UninitializedParameter included, which DistributedDataParallel then refuses; later torch
    counts it as a Parameter only. Give emulated HPU parameters the later behaviour."""
    probe = HpuTensor(torch.zeros(1))
    probe._is_param = True
    if not isinstance(probe, torch.nn.parameter.UninitializedParameter):
        return
    meta = type(torch.nn.Parameter)
    flagged_check = meta.__instancecheck__

    def __instancecheck__(cls, instance):
        if cls is not torch.nn.Parameter and isinstance(instance, HpuTensor):
            return type.__instancecheck__(cls, instance)
        return flagged_check(cls, instance)

    meta.__instancecheck__ = __instancecheck__


_library = None


def register():
    """Routes tensor creation on DEVICE to HpuTensor (idempotent; the bridge does this when it loads)."""
    global _library
    if _library is not None:
        return
    _library = torch.library.Library("aten", "IMPL")
    _library.impl("empty.memory_format", _empty, "Lazy")
    _library.impl("empty_strided", _empty_strided, "Lazy")
    _library.impl("_copy_from", _copy_from, "Lazy")
    _narrow_parameter_subclass_checks()

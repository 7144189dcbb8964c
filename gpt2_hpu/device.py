"""The HPU device: the one object that answers every device question, and the only importer of
`habana_frameworks` in gpt2_hpu.

With GPT2_HPU_EMULATE=N set, `habana_frameworks` resolves to gpt2_hpu's CPU stand-ins
(gpt2_hpu/emulation), and tensors live on the CPU; everything else is the same code path as on Gaudi.
"""
import os
import sys

import torch

from gpt2_hpu import emulation
from gpt2_hpu.errors import UsageError

LAZY_MODE_ENV = "PT_HPU_LAZY_MODE"


class HabanaUnavailable(UsageError):
    """--hpu was asked for, but neither Habana's software nor the emulation is present."""


class HpuDevice:
    """Availability, count, lazy/eager mode, mark_step, synchronize, memory, distributed backend, DDP ids."""

    distributed_backend = "hccl"
    autocast_device_type = "hpu"  # torch.autocast(device_type="hpu"), Habana's mixed precision
    compile_backend = "hpu_backend"  # registered by the bridge in eager mode

    def __init__(self, mode=None):
        """mode: "lazy", "eager" or None (keep PT_HPU_LAZY_MODE, or Habana's default when it is unset)."""
        _select_mode(mode)
        self.emulated = _supply_habana_modules()
        try:
            import habana_frameworks.torch.core as htcore
            import habana_frameworks.torch.hpu as hthpu
            from habana_frameworks.torch.utils.internal import is_lazy
        except ImportError as e:
            raise HabanaUnavailable(
                f"--hpu needs Habana's PyTorch bridge (habana_frameworks), which is not importable here ({e}); "
                f"on a machine without Gaudi set {emulation.ENV_VAR}=N to emulate N HPUs on the CPU") from None
        self._htcore, self._hthpu = htcore, hthpu
        self.lazy = bool(is_lazy())
        if mode is not None and self.lazy != (mode == "lazy"):
            raise UsageError(
                f"--hpu-mode {mode} asked for, but Habana's bridge was already loaded in "
                f"{'lazy' if self.lazy else 'eager'} mode: set {LAZY_MODE_ENV}={'1' if mode == 'lazy' else '0'} "
                "before starting Python instead")
        # The one place where emulation matters: emulated HPU tensors report a device type of their own
        # (gpt2_hpu/emulation/device.py says why it is not "hpu").
        self.torch_device = emulation.DEVICE if self.emulated else torch.device("hpu")
        self.mark_steps = 0  # mark_step calls made through this object (lazy mode only)

    # --- availability -------------------------------------------------------------------------------
    def is_available(self):
        return bool(self._hthpu.is_available())

    def device_count(self):
        return int(self._hthpu.device_count()) if self.is_available() else 0

    def name(self):
        """The card's name, e.g. "GAUDI2". On a Gaudi this acquires the card for this process."""
        return self._hthpu.get_device_name()

    def bridge_version(self):
        """Habana's bridge release: its pip distribution's version, else the loaded package's __version__."""
        from importlib import metadata

        try:
            return metadata.version("habana-torch-plugin")
        except metadata.PackageNotFoundError:
            return getattr(sys.modules.get("habana_frameworks.torch"), "__version__", None)

    # --- execution ----------------------------------------------------------------------------------
    def mark_step(self):
        """End the accumulated lazy graph; eager mode has no graph to end, so nothing is called."""
        if self.lazy:
            self._htcore.mark_step()
            self.mark_steps += 1

    def synchronize(self):
        self._hthpu.synchronize()

    def get_rng_state(self):
        """The HPU generator's state (dropout on the HPU draws from it, not from the CPU generator)."""
        return self._hthpu.get_rng_state()

    def set_rng_state(self, state):
        self._hthpu.set_rng_state(state)

    # --- memory -------------------------------------------------------------------------------------
    def memory_stats(self):
        return self._hthpu.memory_stats()

    def memory_allocated(self):
        return int(self._hthpu.memory_allocated())

    def max_memory_allocated(self):
        return int(self._hthpu.max_memory_allocated())

    # --- distributed --------------------------------------------------------------------------------
    def ddp_device_ids(self):
        # Each process sees exactly one card, always as device 0: DDP must not be given device ids.
        return None

    def initialize_distributed(self, world_size, rank, local_rank):
        """Habana's documented order: launcher environment first, then the hccl import registers the backend."""
        from habana_frameworks.torch.distributed.hccl import initialize_distributed_hpu
        return initialize_distributed_hpu(world_size=world_size, rank=rank, local_rank=local_rank)

    # --- fused kernels ------------------------------------------------------------------------------
    def fused_adamw_class(self):
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW
        return FusedAdamW

    def fused_clip_norm(self, parameters, max_norm):
        from habana_frameworks.torch.hpex.normalization import FusedClipNorm
        return FusedClipNorm(parameters, max_norm)

    def fused_sdpa(self):
        from habana_frameworks.torch.hpex.kernels import FusedSDPA
        return FusedSDPA


def _select_mode(mode):
    if mode is None:
        return
    if mode not in ("lazy", "eager"):
        raise ValueError(f"unknown HPU mode {mode!r}: use 'lazy' or 'eager'")
    if "habana_frameworks.torch" not in sys.modules:
        # Habana reads the mode once, when its bridge loads.
        os.environ[LAZY_MODE_ENV] = "1" if mode == "lazy" else "0"


def _supply_habana_modules():
    """Returns True when the emulation supplies habana_frameworks (GPT2_HPU_EMULATE=N, N > 0)."""
    try:
        count = emulation.requested_device_count()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if count > 0:
        emulation.install()
        return True
    return False


_device = None  # one per process: Habana's bridge loads once


def activate(mode=None):
    """The process-wide HPU device, created on first use."""
    global _device
    if _device is None:
        _device = HpuDevice(mode)
    return _device


def active():
    """The process's HPU device once something has activated it (an --hpu run), else None: for hooks deep
    inside Fairseq (activation-checkpoint recompute, its RNG state) that see no trainer."""
    return _device


def best_available():
    """The best device here, Gaudi (or its emulation) first, then CUDA, then the CPU: ("hpu" | "cuda" | "cpu",
    a description). Asks only what acquires no card: on a 1-card host a parent holding it would starve its
    children (asking the card's name acquires it)."""
    try:
        hpu = HpuDevice()
        if hpu.is_available():
            cards = hpu.device_count()
            return "hpu", (f"hpu ({cards} {'emulated ' if hpu.emulated else ''}card{'s' if cards > 1 else ''}, "
                           f"{'lazy' if hpu.lazy else 'eager'} mode)")
    except (HabanaUnavailable, ImportError):
        pass
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, device

"""Emulated `habana_frameworks.torch`: importing it loads core, distributed.hccl and hpu, like the bridge."""
import os

# The bridge forces this at import time.
os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"

# Loading the bridge library makes the device usable; here that is the emulated device's registration.
from gpt2_hpu.emulation import device as _emulated_device  # noqa: E402

_emulated_device.register()

from . import core, hpu  # noqa: E402,F401
from .distributed import hccl  # noqa: E402,F401
from .utils.internal import emulated_release  # noqa: E402

__version__ = "{}.{}.0 (emulated by gpt2_hpu)".format(*emulated_release())

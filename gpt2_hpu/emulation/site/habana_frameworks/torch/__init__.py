"""Emulated `habana_frameworks.torch`: importing it loads core, distributed.hccl and hpu, like the bridge."""
import os

# The bridge forces this at import time.
os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"

from . import core  # noqa: E402,F401
from .distributed import hccl  # noqa: E402,F401
from . import hpu  # noqa: E402,F401

"""CPU stand-ins for the parts of Habana's `habana_frameworks` package that gpt2_hpu calls.

`GPT2_HPU_EMULATE=N` makes `gpt2_hpu.device` put `site/` first on `sys.path`, so the ordinary
`import habana_frameworks.torch.core` statements resolve to these modules and the whole `--hpu` path
runs on CPU with N emulated cards. The stand-ins follow the documented API (import paths, signatures,
defaults, return types, lazy vs eager behaviour of SynapseAI 1.19+) so code written against them is
correct on a real Gaudi. Emulated HPU tensors are a device of their own (see emulation/device.py).
"""
import os
import sys

import torch

ENV_VAR = "GPT2_HPU_EMULATE"
# The device emulated HPU tensors report (emulation/device.py explains the choice).
DEVICE = torch.device("lazy", 0)
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")


def requested_device_count():
    """Number of emulated cards asked for by GPT2_HPU_EMULATE, or 0 when emulation is off."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return 0
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_VAR}={raw!r} is not a number: set it to the number of emulated HPUs, e.g. {ENV_VAR}=2") from None
    if count < 0:
        raise ValueError(f"{ENV_VAR}={raw!r} must be >= 0")
    return count


def install():
    """Make `import habana_frameworks` resolve to the stand-ins (idempotent)."""
    if SITE_DIR not in sys.path:
        sys.path.insert(0, SITE_DIR)

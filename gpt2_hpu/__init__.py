"""gpt2_hpu: a Fairseq plugin (`--user-dir`) that trains GPT-2 on Habana Gaudi (HPU), CUDA and CPU.

Fairseq imports this package for `--user-dir` after it has loaded itself; that is when the adaptations
register (gpt2_hpu/adaptations.py lists them). Without Fairseq loaded, importing the package registers
nothing, so the data tool (`gpt2-hpu-prepare`) starts fast and runs without Fairseq. The console scripts
and spawned ranks call `adaptations.apply()` themselves.
"""
import sys

__version__ = "0.1.0"

if "fairseq" in sys.modules:
    from gpt2_hpu import (
        adaptations,
        optim,  # noqa: F401  (registers --optimizer fused_adamw)
    )

    adaptations.apply()

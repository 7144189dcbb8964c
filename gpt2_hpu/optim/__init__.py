"""Optimizers for Fairseq: ZeRO-1 sharding (`zero`) and `--optimizer fused_adamw` (`fused_adamw`).

The package needs Fairseq; importing it registers `fused_adamw` with Fairseq's optimizer registry. Every way the
plugin loads imports it (the adaptations import the trainer, which imports this package).
"""
from gpt2_hpu.optim import fused_adamw  # noqa: F401  (registers --optimizer fused_adamw)

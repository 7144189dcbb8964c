"""Optimizers for Fairseq: ZeRO-1 sharding (`zero`) and `--optimizer fused_adamw` (`fused_adamw`).

Both need Fairseq. Importing the package registers `fused_adamw` with Fairseq's optimizer registry, so every
way the plugin loads registers it: `--user-dir` (gpt2_hpu/__init__.py), and the console scripts and spawned
ranks, whose `adaptations.apply()` imports the trainer, which imports this package.
"""
from gpt2_hpu.optim import fused_adamw  # noqa: F401  (registers --optimizer fused_adamw)

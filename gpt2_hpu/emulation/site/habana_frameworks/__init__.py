"""Emulated `habana_frameworks` (gpt2_hpu's CPU stand-in; see gpt2_hpu/emulation/__init__.py)."""
EMULATED = True

"""Execution-mode helpers (`is_lazy`, `lazy_only`) as in the bridge's utils/internal.py."""
import logging
import os

# SynapseAI 1.21+ documents eager mode (PT_HPU_LAZY_MODE=0) as the default; 1.19 read "1".
_DEFAULT_LAZY_MODE = "0"


def is_lazy():
    """True unless PT_HPU_LAZY_MODE is "0". Read once and cached, as in SynapseAI 1.19+."""
    if not hasattr(is_lazy, "_is_lazy"):
        is_lazy._is_lazy = os.getenv("PT_HPU_LAZY_MODE", _DEFAULT_LAZY_MODE) != "0"
    return is_lazy._is_lazy


def lazy_only(func):
    """Decide at import time: the function itself in lazy mode, a silent no-op (warned once) in eager mode."""
    if is_lazy():
        return func

    logging.getLogger("habana_frameworks.torch.utils.internal").warning(
        "Calling %s function does not have any effect. It's lazy mode only functionality. "
        "(warning logged once)", func.__name__)

    def non_lazy_wrapper(*args, **kwargs):
        pass

    non_lazy_wrapper.__name__ = func.__name__
    return non_lazy_wrapper

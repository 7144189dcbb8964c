"""Execution-mode helpers (`is_lazy`, `lazy_only`) as in the bridge's utils/internal.py."""
import logging
import os

# Which release's default to emulate when PT_HPU_LAZY_MODE is unset: up to 1.20 the bridge's code defaults to
# lazy ("1"); from 1.21 the documented default is eager ("0"). GPT2_HPU_EMULATE_RELEASE=1.19 emulates the older.
RELEASE_ENV = "GPT2_HPU_EMULATE_RELEASE"
NEWEST_RELEASE = "1.23"


def emulated_release():
    raw = os.environ.get(RELEASE_ENV, "").strip() or NEWEST_RELEASE
    try:
        major, minor = (int(part) for part in raw.split(".")[:2])
    except ValueError:
        raise ValueError(f"{RELEASE_ENV}={raw!r} is not a release number such as 1.19") from None
    return major, minor


def default_lazy_mode():
    return "1" if emulated_release() < (1, 21) else "0"


def is_lazy():
    """True unless PT_HPU_LAZY_MODE is "0". Read once and cached, as in SynapseAI 1.19+."""
    if not hasattr(is_lazy, "_is_lazy"):
        is_lazy._is_lazy = os.getenv("PT_HPU_LAZY_MODE", default_lazy_mode()) != "0"
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

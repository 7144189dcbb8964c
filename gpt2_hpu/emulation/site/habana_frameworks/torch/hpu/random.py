"""Emulated HPU random-number state: one generator per process (device 0), state as a CPU uint8 tensor."""
import torch

__all__ = ["get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "manual_seed",
           "manual_seed_all", "seed", "seed_all", "initial_seed"]

_generator = torch.Generator(device="cpu")


def generator():
    """The emulated card's generator (emulation-internal: random ops on emulated HPU tensors draw from it)."""
    return _generator


def _index(device):
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    return torch.device(device).index or 0


def get_rng_state(device="hpu"):
    if _index(device) != 0:
        raise RuntimeError("hpu get_rng_state supports only device 0")
    return _generator.get_state()


def set_rng_state(new_state, device="hpu"):
    if _index(device) != 0:
        raise RuntimeError("hpu set_rng_state supports only device 0")
    _generator.set_state(new_state)


def get_rng_state_all():
    return [get_rng_state()]


def set_rng_state_all(states):
    if len(states) != 1:
        raise RuntimeError("hpu set_rng_state_all expects exactly one state")
    set_rng_state(states[0])


def manual_seed(seed):
    return _generator.manual_seed(int(seed))


def manual_seed_all(seed):
    manual_seed(seed)


def seed():
    return _generator.seed()


def seed_all():
    seed()


def initial_seed():
    return _generator.initial_seed()

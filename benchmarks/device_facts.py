"""The device a benchmark child ran on, its peak memory and its page faults, as the throughput benchmark records
them."""
import platform
import resource


def device_facts(on_cuda):
    """(device name, peak memory in bytes, what that peak is): the CUDA device's name and
    `max_memory_allocated()`, or the CPU's model name and this process's maximum resident set."""
    if on_cuda:
        import torch

        return torch.cuda.get_device_name(), torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host max RSS"


def page_faults():
    """The minor page faults of this process so far: each one the kernel mapping it a fresh zero-filled page."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

"""Emulated `hpu_backend`: registered under the same name, through AOTAutograd, as the bridge does in eager mode.

The bridge compiles the forward and backward graphs into Synapse recipes; here the graphs run op by op on the
emulated device. (dynamo cannot build fake tensors of the emulated HPU tensor, so on emulated HPU tensors it
falls back to running the model eagerly: the emulation does not model graph compilation.)
"""
from torch._dynamo import register_backend
from torch._dynamo.backends.common import aot_autograd

__all__ = ["hpu_backend"]


def _run_graph(graph_module, example_inputs):
    return graph_module.forward


@register_backend
def hpu_backend(graph_module, example_inputs, **kwargs):
    return aot_autograd(fw_compiler=_run_graph, bw_compiler=_run_graph)(graph_module, example_inputs, **kwargs)

"""`--compile-mode`, in-process: which runs may ask for it, that inductor receives the mode, and what CUDA graphs
need of the trainer (loss values and gradients in memory a replay does not overwrite). Whether the graphs replay
at all needs a CUDA device: benchmarks/train_throughput.py runs them there."""
import pytest
from omegaconf import OmegaConf

from gpt2_hpu.checks import compile_mode
from gpt2_hpu.errors import UsageError


def _cfg(**common):
    return OmegaConf.create({"common": dict({"compile": True, "compile_backend": "", "hpu": False, "cpu": False},
                                            **common)})


@pytest.mark.parametrize("common, refused", [
    ({"compile_mode": "default"}, None),
    ({"compile_mode": "max-autotune-no-cudagraphs"}, None),
    ({"compile_mode": "max-autotune-no-cudagraphs", "compile": False, "fast_path": True}, None),
    ({"compile_mode": "reduce-overhead", "compile": False}, "--compile-mode reduce-overhead is a mode of "
                                                           "torch.compile: add --compile (or --fast-path)"),
    ({"compile_mode": "max-autotune-no-cudagraphs", "hpu": True},
     "--compile-mode max-autotune-no-cudagraphs is a mode of torch.compile's inductor backend, and this run "
     "compiles with hpu_backend: leave --compile-mode out"),
    ({"compile_mode": "max-autotune-no-cudagraphs", "compile_backend": "eager"},
     "--compile-mode max-autotune-no-cudagraphs is a mode of torch.compile's inductor backend, and this run "
     "compiles with eager: leave --compile-mode out"),
    ({"compile_mode": "reduce-overhead", "cpu": True},
     "--compile-mode reduce-overhead replays CUDA graphs, and this run has no CUDA device: use --compile-mode "
     "max-autotune-no-cudagraphs, or leave --compile-mode out"),
    ({"compile_mode": "max-autotune", "cpu": True}, "--compile-mode max-autotune replays CUDA graphs"),
])
def test_who_may_ask_for_a_compile_mode(common, refused):
    message = compile_mode(_cfg(**common))
    assert (message is None) if refused is None else message.startswith(refused), message


def test_inductor_receives_the_mode_as_its_config_patches():
    import torch

    from gpt2_hpu.fast_path import CompileWatch

    watch = CompileWatch("inductor", "reduce-overhead")
    received = []

    def inductor(graph_module, example_inputs, **kwargs):
        received.append(kwargs)
        return graph_module.forward

    watch._backend = inductor
    torch._dynamo.reset()
    fn = torch.compile(lambda x: x * 2 + 1, backend=watch.backend, dynamic=False)
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0))
    assert received == [{"config_patches": {"triton.cudagraphs": True}}] and watch.compiles == 1
    # The default mode passes nothing of its own.
    assert CompileWatch("inductor")._config_patches == {}
    with pytest.raises(UsageError, match="mode of torch.compile's inductor backend, and this run compiles with "
                                         "eager"):
        CompileWatch("eager", "reduce-overhead")


def test_loss_values_outlive_the_memory_a_replay_overwrites():
    import torch

    from gpt2_hpu.fast_path import owned_outputs

    buffer = torch.zeros(())

    def replayed(x):  # as a CUDA graph does: every call writes its result to the same memory
        buffer.copy_(x.sum())
        return buffer, buffer

    first = owned_outputs(replayed, torch.ones(2))
    second = owned_outputs(replayed, torch.ones(5))
    assert [t.item() for t in first + second] == [2.0, 2.0, 5.0, 5.0]
    assert buffer.item() == 5.0  # without the copies, the first call's values would read 5 now


def test_gradients_accumulate_in_buffers_kept_from_update_to_update():
    import torch

    from gpt2_hpu.trainer import PluginTrainer

    class Optimizer:  # Fairseq's FairseqOptimizer.zero_grad frees the gradients
        def __init__(self, params):
            self.params = params

        def zero_grad(self):
            for p in self.params:
                p.grad = None

    def updates(kept):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        trainer = PluginTrainer.__new__(PluginTrainer)  # only what zero_grad reads
        trainer._model, trainer._optimizer, trainer._grads_kept = model, Optimizer(list(model.parameters())), kept
        grads, buffers = [], []
        for update in range(3):
            trainer.zero_grad()
            buffers.append([p.grad for p in model.parameters()])
            for micro_batch in range(2):
                model(torch.full((2, 4), float(update + micro_batch))).pow(2).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        return grads, buffers

    freed, freed_buffers = updates(kept=False)
    kept, kept_buffers = updates(kept=True)
    assert all(torch.equal(a, b) for update_a, update_b in zip(freed, kept) for a, b in zip(update_a, update_b))
    assert all(g is None for g in freed_buffers[0])
    # From the first update on, the same two tensors hold the gradients, zeroed at each update's start.
    assert all(a is b for a, b in zip(kept_buffers[1], kept_buffers[2]))
    assert all(g is not None for g in kept_buffers[0]) and kept_buffers[0][0] is kept_buffers[2][0]

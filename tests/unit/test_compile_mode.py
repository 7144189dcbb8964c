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


def test_which_runs_replay_cuda_graphs():
    from torch._inductor import config

    from gpt2_hpu.fast_path import CompileWatch

    replayed = [CompileWatch("inductor", "reduce-overhead"), CompileWatch("inductor", "max-autotune"),
                CompileWatch("cudagraphs")]
    assert all(watch.cuda_graphs for watch in replayed)
    plain = [CompileWatch("inductor"), CompileWatch("inductor", "max-autotune-no-cudagraphs"), CompileWatch("eager")]
    assert not any(watch.cuda_graphs for watch in plain)
    # Inductor's own switch (TORCHINDUCTOR_CUDAGRAPHS=1) replays them too: the trainer must know.
    assert not config.triton.cudagraphs
    with config.patch({"triton.cudagraphs": True}):
        assert CompileWatch("inductor").cuda_graphs and not CompileWatch("eager").cuda_graphs


def test_the_loss_is_copied_out_only_where_graphs_replay():
    import functools

    from gpt2_hpu.fast_path import CompileWatch, compile_loss, owned_outputs

    class Criterion:
        def compute_loss(self, model, net_output, sample, reduce=True):
            return net_output, net_output

    replayed, plain = Criterion(), Criterion()
    assert compile_loss(replayed, CompileWatch("inductor", "reduce-overhead"))
    assert compile_loss(plain, CompileWatch("eager"))
    assert isinstance(replayed.compute_loss, functools.partial) and replayed.compute_loss.func is owned_outputs
    assert not isinstance(plain.compute_loss, functools.partial)


def test_the_causal_mask_built_beforehand_spares_a_second_compilation():
    import kernel_helpers as kh
    import torch

    from gpt2_hpu.fast_path import future_masks_on_device

    def compilations_per_call(built_beforehand):
        model = kh.tiny_lm()
        if built_beforehand:
            future_masks_on_device(model, kh.TOKENS)
            assert model.decoder._future_mask.shape == (kh.TOKENS, kh.TOKENS)
        seen = []

        def count(graph_module, example_inputs):
            seen.append(graph_module)
            return graph_module.forward

        torch._dynamo.reset()
        forward = torch.compile(model.forward, backend=count, dynamic=False)
        counts = []
        for _ in range(3):
            forward(kh.tokens())[0].sum().backward()
            counts.append(len(seen))
        return counts

    # Fairseq's decoder builds its mask during the first call, and the changed cache makes dynamo compile again.
    first, second, third = compilations_per_call(built_beforehand=False)
    assert second > first and third == second
    first, second, third = compilations_per_call(built_beforehand=True)
    assert first == second == third

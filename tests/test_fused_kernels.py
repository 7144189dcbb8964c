"""The fast path's kernels: fused causal attention and `--optimizer fused_adamw` give stock Fairseq's results.

In-process on the CPU, with one child interpreter for everything on the emulated HPU (the emulation puts its
`habana_frameworks` stand-ins in place for the whole process).
"""
import copy
import pickle
import shlex
import subprocess
import sys
import textwrap

import kernel_helpers as kh
import pytest
import torch

from helpers import PACKAGE_DIR, REPO, emulation_env


@pytest.fixture(scope="module", autouse=True)
def plugin():
    import fairseq  # noqa: F401  (the plugin registers its parts only once Fairseq is loaded)

    from gpt2_hpu import adaptations

    adaptations.apply()
    import gpt2_hpu.optim  # noqa: F401


def _fused_copy(model, sdpa=None):
    from gpt2_hpu.fused_attention import use_fused_attention

    fused = copy.deepcopy(model)
    assert use_fused_attention(fused, sdpa) == 2
    return fused


def _assert_same(a, b, atol=1e-5):
    logits_a, grads_a = a
    logits_b, grads_b = b
    torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=1e-5, msg=name)


# --- attention ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_fused_attention_equals_stock_forward_and_gradients(training):
    from fairseq.modules import MultiheadAttention

    stock = kh.tiny_lm()
    kh.RecordingSDPA.calls.clear()
    from gpt2_hpu.fused_attention import habana_sdpa

    fused = _fused_copy(stock, habana_sdpa(kh.RecordingSDPA))
    stock.train(training)
    fused.train(training)
    toks = kh.tokens()
    _assert_same(kh.forward_backward(stock, toks), kh.forward_backward(fused, toks))
    # One fused call per layer, causal, no mask, Fairseq's scale (the default), dropout 0 here.
    assert kh.RecordingSDPA.calls == [((kh.BATCH, 2, kh.TOKENS, 32), None, 0.0, True)] * 2
    assert all(isinstance(layer.self_attn, MultiheadAttention) for layer in fused.decoder.layers)


def _matrix_products(model, toks):
    """How many 2-D matrix products (aten mm and addmm: linear layers, not attention) one forward and backward
    of `model` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    products = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func in products
            return func(*args, **(kwargs or {}))

    with Count():
        kh.forward_backward(model, toks)
    return Count.n


def test_q_k_and_v_come_from_one_matrix_product():
    stock = kh.tiny_lm()
    fused = _fused_copy(stock)
    toks = kh.tokens()
    # Per layer, stock projects q, k and v with three products forward and six backward (input and weight
    # gradients); the fused layer with one forward and two backward.
    assert _matrix_products(stock, toks) - _matrix_products(fused, toks) == 2 * ((3 + 6) - (1 + 2))
    # Three gradients, one per stock parameter, none of them shared: the state dict is still stock's.
    _, grads = kh.forward_backward(fused, toks)
    names = [f"decoder.layers.0.self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")]
    assert all(grads[n].abs().sum() > 0 for n in names)


def test_projections_with_hooks_run_as_they_are():
    stock = kh.tiny_lm()
    fused = _fused_copy(stock)
    calls = []
    for layer in fused.decoder.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.register_forward_pre_hook(lambda module, args: calls.append(module))
    toks = kh.tokens()
    _assert_same(kh.forward_backward(stock, toks), kh.forward_backward(fused, toks))
    assert len(calls) == 3 * 2


def test_attention_dropout_is_drawn_in_training_and_reproducible_by_seed():
    fused = _fused_copy(kh.tiny_lm(attention_dropout=0.3))
    toks = kh.tokens()

    def logits(seed, training=True):
        fused.train(training)
        torch.manual_seed(seed)
        return fused(toks)[0].detach()

    assert torch.equal(logits(1), logits(1))
    assert not torch.allclose(logits(1), logits(2), atol=1e-3)
    # In eval there is nothing to draw: the seed does not matter, and the result is the dropout-free one.
    assert torch.equal(logits(1, training=False), logits(2, training=False))
    assert not torch.allclose(logits(1), logits(1, training=False), atol=1e-3)


def _greedy_logits(model, toks):
    """Token-by-token decoding with Fairseq's incremental state, as generation runs it."""
    model.eval()
    state, out = {}, []
    with torch.no_grad():
        for t in range(toks.size(1)):
            out.append(model.decoder(toks[:, : t + 1], incremental_state=state)[0][:, -1])
    return torch.stack(out, dim=1)


def test_generation_and_padded_batches_run_stock_attention():
    def refuse(*args, **kwargs):
        raise AssertionError("fused kernel called outside the plain causal case")

    stock = kh.tiny_lm()
    fused = _fused_copy(stock, refuse)
    toks = kh.tokens()
    expected = _greedy_logits(stock, toks)
    torch.testing.assert_close(_greedy_logits(fused, toks), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(expected, stock(toks)[0], atol=1e-5, rtol=1e-5)
        padded = toks.clone()
        padded[0, -3:] = stock.decoder.dictionary.pad()
        torch.testing.assert_close(fused(padded)[0], stock(padded)[0], atol=1e-5, rtol=1e-5)
        with pytest.raises(AssertionError, match="fused kernel called"):
            fused(toks)  # the plain case does reach the kernel


def _lm_step(model, toks):
    """As Fairseq's language modeling trains: the next token is the target, pad where there is none (the target
    of every pad input is pad), and the loss ignores pad targets. Returns the logits, the gradients and how many
    device reads the forward made."""
    pad = model.decoder.dictionary.pad()
    target = torch.cat([toks[:, 1:], torch.full_like(toks[:, :1], pad)], dim=1)
    target[toks.eq(pad)] = pad
    model.zero_grad(set_to_none=True)
    with kh.HostReads() as counter:
        logits = model(toks)[0]
    lprobs = torch.log_softmax(logits, dim=-1)
    torch.nn.functional.nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), ignore_index=pad,
                                 reduction="sum").backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(counter.storages)


def _padded_at_end(toks, pad):
    toks = toks.clone()
    toks[0, -5:] = pad
    toks[2, -1:] = pad
    return toks


def test_padding_at_the_end_is_masked_without_a_device_read():
    from gpt2_hpu.padding import PaddingAtEnd

    stock = kh.tiny_lm(attention_dropout=0.0)
    fused = _fused_copy(stock)
    assert PaddingAtEnd(fused).active
    pad = stock.decoder.dictionary.pad()
    toks = _padded_at_end(kh.tokens(), pad)
    logits, grads, reads = _lm_step(stock, toks)
    fused_logits, fused_grads, fused_reads = _lm_step(fused, toks)
    assert (reads, fused_reads) == (1, 0)  # Fairseq's `prev_output_tokens.eq(pad).any()`, and none
    real = toks.ne(pad)
    torch.testing.assert_close(fused_logits[real], logits[real], atol=1e-5, rtol=1e-5)
    # Only what the loss ignores differs: a pad position's own output, which now also attends to pads.
    assert not torch.allclose(fused_logits[~real], logits[~real], atol=1e-3)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_a_batch_padded_before_its_end_brings_back_fairseqs_padding_test():
    from gpt2_hpu.padding import PaddingAtEnd, padded_at_end

    stock = kh.tiny_lm()
    fused = _fused_copy(stock)
    padding = PaddingAtEnd(fused)
    ema = copy.deepcopy(fused)  # as Fairseq's EMA copies the model, after the trainer set it up
    pad = stock.decoder.dictionary.pad()
    at_end = _padded_at_end(kh.tokens(), pad)
    before_end = at_end.clone()
    before_end[1, 4:6] = pad  # pads with real tokens after them (not at position 0: a query whose keys are all
    # masked gives NaN in stock Fairseq on older torch)
    assert padded_at_end(at_end, pad) and padded_at_end(kh.tokens(), pad)
    assert not padded_at_end(before_end, pad) and not padded_at_end(at_end[0], pad)
    padding.check({"net_input": {"src_tokens": at_end, "src_lengths": None}}, [fused, ema])
    assert padding.active
    padding.check({"net_input": {"src_tokens": before_end, "src_lengths": None}}, [fused, ema])
    assert not padding.active and fused.decoder.cross_self_attention is False and not ema.decoder.cross_self_attention
    padding.check({"net_input": {"src_tokens": at_end, "src_lengths": None}}, [fused, ema])
    assert not padding.active  # for the rest of the run
    logits, grads, reads = _lm_step(stock, before_end)
    for model in (fused, ema):
        fused_logits, fused_grads, fused_reads = _lm_step(model, before_end)
        assert reads == fused_reads == 1
        torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)  # every position: the mask applies
        for name in grads:
            torch.testing.assert_close(fused_grads[name], grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_the_host_check_reads_targets_and_refuses_batches_it_cannot_read():
    from gpt2_hpu.padding import PaddingAtEnd, padded_at_end

    pad = kh.tiny_lm().decoder.dictionary.pad()
    toks = _padded_at_end(kh.tokens(), pad)
    target = torch.cat([toks[:, 1:], torch.full_like(toks[:, :1], pad)], dim=1)
    target[toks.eq(pad)] = pad
    assert padded_at_end(toks, pad, target)
    literal = target.clone()
    literal[2, -1] = 7  # the input's last pad is a pad symbol in the text: the loss reads its output
    assert not padded_at_end(toks, pad, literal) and not padded_at_end(toks, pad, target[:, :-1])
    for tokens, tgt in [(toks, literal), (torch.empty_like(toks, device="meta"), target)]:
        fused = _fused_copy(kh.tiny_lm())
        padding = PaddingAtEnd(fused)
        padding.check({"net_input": {"src_tokens": tokens}, "target": tgt}, [fused])
        assert not padding.active and not fused.decoder.layers[0].self_attn.padding_at_end


def test_layerdrop_switches_every_layer():
    from gpt2_hpu.padding import PaddingAtEnd

    fused = _fused_copy(kh.tiny_lm(decoder_layerdrop=0.5)).train()
    attentions = [layer.self_attn for layer in fused.decoder.layers.children()]
    for _ in range(5):  # a layer left out of an iteration keeps its flag: try several draws
        padding = PaddingAtEnd(fused)
        assert padding.active and all(a.padding_at_end for a in attentions)
        before_end = kh.tokens()
        before_end[0, 3] = fused.decoder.dictionary.pad()
        padding.check({"net_input": {"src_tokens": before_end}}, [fused])
        assert not any(a.padding_at_end for a in attentions) and not fused.decoder.cross_self_attention


def test_padding_test_stays_where_an_attention_is_not_fused():
    from gpt2_hpu.padding import PaddingAtEnd

    stock = kh.tiny_lm()
    assert not PaddingAtEnd(stock).active
    assert stock.decoder.cross_self_attention is False
    half = _fused_copy(stock)
    half.decoder.layers[1].self_attn.__class__ = type(stock.decoder.layers[1].self_attn)
    assert not PaddingAtEnd(half).active


def test_state_dicts_are_stocks_and_load_both_ways():
    stock = kh.tiny_lm()
    before = {k: v.clone() for k, v in stock.state_dict().items()}
    fused = _fused_copy(stock)
    after = fused.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)

    other = kh.tiny_lm(seed=7)
    fused_other = _fused_copy(other)
    fused_other.load_state_dict(before, strict=True)
    other.load_state_dict(after, strict=True)
    toks = kh.tokens()
    for model in (stock, fused_other, other):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused_other(toks)[0], stock(toks)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other(toks)[0], stock(toks)[0], atol=1e-5, rtol=1e-5)


def test_copies_pickles_and_repeated_calls():
    from gpt2_hpu.fused_attention import (
        FusedCausalSelfAttention,
        fused_attention_count,
        habana_sdpa,
        torch_sdpa,
        use_fused_attention,
    )

    model = kh.tiny_lm()
    assert use_fused_attention(model, habana_sdpa(kh.RecordingSDPA)) == 2
    assert use_fused_attention(model, habana_sdpa(kh.RecordingSDPA)) == 0
    assert use_fused_attention(model) == 2  # the kernel replaced
    assert use_fused_attention(model, torch_sdpa) == 0
    assert fused_attention_count(model) == 2
    model.eval()
    toks = kh.tokens()
    with torch.no_grad():
        expected = model(toks)[0]
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert fused_attention_count(clone) == 2
            assert all(type(layer.self_attn) is FusedCausalSelfAttention for layer in clone.decoder.layers)
            assert torch.equal(clone(toks)[0], expected)
    with_habana = copy.deepcopy(model)
    use_fused_attention(with_habana, habana_sdpa(kh.RecordingSDPA))
    kh.RecordingSDPA.calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(pickle.dumps(with_habana))(toks)[0], expected, atol=1e-5, rtol=1e-5)
    assert len(kh.RecordingSDPA.calls) == 2


def test_fused_attention_under_torch_compile():
    model = kh.tiny_lm()
    fused = _fused_copy(model)
    attn = fused.decoder.layers[0].self_attn
    x = torch.randn(kh.TOKENS, kh.BATCH, 64, requires_grad=True)
    mask = fused.decoder.buffered_future_mask(x)

    def run(module):
        x.grad = None
        module.zero_grad()
        out, _ = module(query=x, key=x, value=x, need_weights=False, attn_mask=mask)
        out.square().sum().backward()
        return out.detach(), x.grad.clone(), attn.q_proj.weight.grad.clone()

    expected = run(attn)
    torch._dynamo.reset()
    compiled = torch.compile(attn, backend="aot_eager", fullgraph=True)  # no graph break in the fused path
    for got, want in zip(run(compiled), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_model_compiles_to_one_graph_once_padding_is_checked_on_the_host():
    from torch._dynamo.exc import Unsupported

    from gpt2_hpu.padding import PaddingAtEnd

    stock = kh.tiny_lm()
    fused = _fused_copy(stock)
    pad = stock.decoder.dictionary.pad()
    toks = _padded_at_end(kh.tokens(), pad)
    torch._dynamo.reset()
    with pytest.raises(Unsupported):  # Fairseq's padding test: data-dependent control flow, a graph break
        torch.compile(fused, backend="eager", fullgraph=True)(toks)
    PaddingAtEnd(fused)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(fused, backend="eager", fullgraph=True)(toks)[0]
        real = toks.ne(pad)
        torch.testing.assert_close(got[real], stock(toks)[0][real], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-rank gloo group: enough for DDP and ZeRO to wrap the model and the optimizer."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield dist.group.WORLD
        return
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_fused_attention_inside_ddp(process_group):
    stock = kh.tiny_lm()
    fused = _fused_copy(stock)
    wrapped = torch.nn.parallel.DistributedDataParallel(fused, process_group=process_group)
    toks = kh.tokens()
    _assert_same(kh.forward_backward(stock, toks), kh.forward_backward(wrapped, toks))


# --- optimizer ------------------------------------------------------------------------------------------------

def _params():
    return [p for p in kh.tiny_lm().parameters()]


def _adam_result(params, steps=5):
    params = kh.copies(params)
    return kh.run_steps(kh.fairseq_adam(params), params, kh.gradients(params, steps))


def _assert_params_close(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_fused_adamw_follows_fairseq_adam(kernel):
    from fairseq.optim import build_optimizer

    from gpt2_hpu.optim.fused_adamw import FairseqFusedAdamW, FairseqRuleAdamW

    start = _params()
    params = kh.copies(start)
    optimizer = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), params)
    assert isinstance(optimizer, FairseqFusedAdamW) and isinstance(optimizer.optimizer, FairseqRuleAdamW)
    assert optimizer.optimizer.defaults["fused"] is True  # both torch versions have a fused CPU AdamW
    if kernel == "foreach":
        optimizer.optimizer = FairseqRuleAdamW(params, foreach=True, **optimizer.optimizer_config)
        assert not optimizer.optimizer.defaults["fused"]
    got = kh.run_steps(optimizer, params, kh.gradients(params, 5))
    _assert_params_close(got, _adam_result(start))
    assert optimizer.param_groups[0]["host_step"] == 5 and optimizer.param_groups[0]["eps"] == 1e-8


def test_without_the_eps_correction_torch_adamw_differs():
    start = _params()
    params = kh.copies(start)
    plain = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    got = kh.run_steps(plain, params, kh.gradients(params, 5))
    want = _adam_result(start)
    worst = max(((a - b).abs() / b.abs().clamp_min(1e-3)).max().item() for a, b in zip(got, want))
    assert worst > 1e-4, worst


def test_fused_adamw_state_dict_round_trip_mid_way():
    from fairseq.optim import build_optimizer

    start = _params()
    params = kh.copies(start)
    grads = kh.gradients(params, 5)
    first = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), params)
    kh.run_steps(first, params, grads[:2])
    saved = copy.deepcopy(first.state_dict())
    assert [g["host_step"] for g in saved["param_groups"]] == [2]

    resumed_params = kh.copies(params)
    resumed = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), resumed_params)
    resumed.load_state_dict(copy.deepcopy(saved), optimizer_overrides=resumed.optimizer_config)
    assert resumed.param_groups[0]["host_step"] == 2
    got = kh.run_steps(resumed, resumed_params, grads[2:])
    _assert_params_close(got, _adam_result(start))
    assert [torch.equal(a, b) for a, b in zip(got, kh.run_steps(first, params, grads[2:]))] == [True] * len(got)

    # A state dict without the host-side count (a plain AdamW's) takes it from the per-parameter steps.
    for group in saved["param_groups"]:
        del group["host_step"]
    again = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), kh.copies(params))
    again.load_state_dict(saved)
    assert again.param_groups[0]["host_step"] == 2


def test_fused_adamw_under_zero_sharding(process_group):
    from fairseq.optim import build_optimizer

    from gpt2_hpu.optim import zero

    start = _params()
    params = kh.copies(start)
    optimizer = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), params)
    sharded = zero.shard(optimizer, process_group)
    assert optimizer.optimizer is sharded and optimizer.supports_flat_params
    got = kh.run_steps(optimizer, params, kh.gradients(params, 5))
    _assert_params_close(got, _adam_result(start))
    assert sharded.optim.param_groups[0]["host_step"] == 5


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "zero"])
def test_fused_adamw_skips_a_flagged_step_on_the_device_and_takes_back_its_count(sharded, request):
    from fairseq.optim import build_optimizer

    from gpt2_hpu.optim import zero
    from gpt2_hpu.optim.fused_adamw import device_skip

    def built(params):
        optimizer = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), params)
        if sharded:
            zero.shard(optimizer, request.getfixturevalue("process_group"))
        return optimizer

    start = _params()
    grads = kh.gradients(start, 4)
    reference_params = kh.copies(start)
    reference = kh.run_steps(built(reference_params), reference_params, grads)

    params = kh.copies(start)
    optimizer = built(params)
    skip = device_skip(optimizer)
    local = optimizer.optimizer.optim if sharded else optimizer.optimizer
    for step_grads in grads[:2]:
        skip.skip_next_step_where(torch.zeros(()))  # a finite norm: the step is taken as without a flag
        kh.run_steps(optimizer, params, [step_grads])
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(local.state_dict()["state"])
    skip.skip_next_step_where(torch.ones(()))
    kh.run_steps(optimizer, params, [[torch.full_like(p, float("nan")) for p in params]])
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    for key, tensors in local.state_dict()["state"].items():
        assert all(torch.equal(value, state[key][name]) for name, value in tensors.items()), key
    assert [g["host_step"] for g in optimizer.param_groups] == [3]
    skip.uncount_last_step()
    assert [g["host_step"] for g in optimizer.param_groups] == [g["host_step"] for g in local.param_groups] == [2]
    got = kh.run_steps(optimizer, params, grads[2:])  # unflagged again: the flag is for one step
    assert [torch.equal(a, b) for a, b in zip(got, reference)] == [True] * len(got)


def test_only_torchs_fused_adamw_can_skip_a_step_on_the_device():
    from fairseq.optim import build_optimizer

    from gpt2_hpu.optim.fused_adamw import FairseqRuleAdamW, device_skip

    params = _params()
    fused = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=False), params)
    assert device_skip(fused) is not None
    assert device_skip(build_optimizer(kh.optimizer_cfg("adam", fp16_adam_stats=False), kh.copies(params))) is None
    fused.optimizer = FairseqRuleAdamW(params, foreach=True, **fused.optimizer_config)
    assert device_skip(fused) is None
    with pytest.raises(RuntimeError, match="only torch's fused AdamW kernels"):
        fused.optimizer.skip_next_step_where(torch.ones(()))


ADAM_FLAGS = "--adam-betas '(0.9, 0.95)' --adam-eps 1e-6 --weight-decay 0.1 --use-old-adam --lr 0.0006"


def _parse(optimizer, extra=""):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = shlex.split(f"/data --user-dir {PACKAGE_DIR} --task language_modeling --arch transformer_lm_gpt "
                       f"--optimizer {optimizer} {ADAM_FLAGS} --lr-scheduler cosine --warmup-updates 2 "
                       f"--max-update 10 {extra}")
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))


def test_fused_adamw_takes_adams_flags_and_works_with_fairseqs_schedulers():
    from omegaconf import OmegaConf

    from fairseq.optim import build_optimizer
    from fairseq.optim.lr_scheduler import build_lr_scheduler

    adam = OmegaConf.to_container(_parse("adam").optimizer, resolve=True)
    cfg = _parse("fused_adamw")
    fused = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert fused.pop("_name") == "fused_adamw" and adam.pop("_name") == "adam"
    assert fused.pop("hpu") is False
    assert fused == adam
    assert _parse("fused_adamw", "--hpu").optimizer.hpu is True

    params = kh.copies(_params())
    optimizer = build_optimizer(cfg.optimizer, params)
    assert optimizer.optimizer_config == {"lr": 0.0006, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    scheduler = build_lr_scheduler(cfg.lr_scheduler, optimizer)
    scheduler.step_update(1)
    assert 0 < optimizer.get_lr() < 0.0006


def test_fused_adamw_under_fairseqs_fp16_optimizer():
    from fairseq.optim import FP16Optimizer

    start = _params()
    masters = {}
    for name in ("adam", "fused_adamw"):
        # Flat master parameters are built on a CUDA device only; per-parameter masters take the same steps.
        cfg = _parse(name, "--fp16 --fp16-init-scale 1 --fp16-no-flatten-grads")
        params = [p.half() for p in kh.copies(start)]
        optimizer = FP16Optimizer.build_optimizer(cfg, params)
        for step in kh.gradients(params, 5):
            # A loss whose gradients are the given ones, through the wrapper's backward (loss scaling included).
            optimizer.backward(sum((p * g.half()).sum() for p, g in zip(params, step)))
            optimizer.step()
            optimizer.zero_grad()
        masters[name] = [p.detach().clone() for p in optimizer.fp32_params]
        assert all(p.dtype == torch.float32 for p in masters[name])
        assert not torch.allclose(masters[name][0], start[0].half().float())  # the steps were taken
    _assert_params_close(masters["fused_adamw"], masters["adam"])


# --- the emulated HPU ---------------------------------------------------------------------------------------

EMULATED = """
import copy, torch
import fairseq
from gpt2_hpu import adaptations
adaptations.apply()
import kernel_helpers as kh
from gpt2_hpu.device import HpuDevice
from gpt2_hpu.fused_attention import habana_sdpa, use_fused_attention
from fairseq.optim import build_optimizer

d = HpuDevice()  # puts the habana_frameworks stand-ins in place
from habana_frameworks.torch.hpex.optimizers import FusedAdamW
toks = kh.tokens()
for training in (True, False):
    stock = kh.tiny_lm()
    hpu = copy.deepcopy(stock).to(d.torch_device)
    assert use_fused_attention(hpu, habana_sdpa(d.fused_sdpa())) == 2
    stock.train(training); hpu.train(training)
    want_logits, want_grads = kh.forward_backward(stock, toks)
    logits, grads = kh.forward_backward(hpu, toks.to(d.torch_device))
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], atol=1e-5, rtol=1e-5, msg=name)
assert next(hpu.parameters()).device == d.torch_device

start = [p for p in kh.tiny_lm().parameters()]
ref = kh.copies(start)
want = kh.run_steps(kh.fairseq_adam(ref), ref, kh.gradients(ref, 5))
params = kh.copies(start, d.torch_device)
optimizer = build_optimizer(kh.optimizer_cfg("fused_adamw", hpu=True), params)
assert type(optimizer.optimizer) is FusedAdamW, type(optimizer.optimizer)
assert optimizer.optimizer.defaults["bias_correction"] is True and optimizer.optimizer.defaults["eps"] == 1e-8
got = kh.run_steps(optimizer, params, kh.gradients(params, 5))
for a, b in zip(got, want):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
print("emulated checks passed")
"""


def test_on_the_emulated_hpu_fused_sdpa_and_fused_adamw_give_stocks_results():
    env = emulation_env(devices=1, mode="eager")
    env["PYTHONPATH"] = f"{REPO}:{REPO / 'tests'}"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(EMULATED)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "emulated checks passed" in proc.stdout, proc.stdout + proc.stderr

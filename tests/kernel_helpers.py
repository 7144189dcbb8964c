"""A tiny Fairseq GPT, an optimizer stepper and a counter of host reads, shared by tests/test_fused_kernels.py, its
emulated-HPU child and other tests."""
from argparse import Namespace

import torch

VOCAB = 40
TOKENS = 16
BATCH = 3


def tiny_lm(seed=0, attention_dropout=0.0, **overrides):
    """`transformer_lm_gpt` at 2 layers x 64 wide, through Fairseq's architecture registry; only attention
    dropout (if any), so that the attention alone decides whether two forwards agree. `overrides`: more of the
    architecture's arguments."""
    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer_lm import TransformerLanguageModel

    dictionary = Dictionary()
    for i in range(VOCAB - len(dictionary)):
        dictionary.add_symbol(f"w{i}")
    args = Namespace(decoder_layers=2, decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_attention_heads=2,
                     share_decoder_input_output_embed=True, decoder_learned_pos=True, tokens_per_sample=TOKENS,
                     max_target_positions=None, dropout=0.0, attention_dropout=attention_dropout,
                     activation_dropout=0.0, **overrides)
    ARCH_CONFIG_REGISTRY["transformer_lm_gpt"](args)
    task = Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    return TransformerLanguageModel.build_model(args, task)


def tokens(seed=1, length=TOKENS):
    """A batch without padding (Fairseq's decoder then passes no key padding mask)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (BATCH, length), generator=g)


def forward_backward(model, toks):
    """The model's logits and every parameter's gradient (by name), all on the host."""
    model.zero_grad(set_to_none=True)
    logits = model(toks)[0]
    # A fixed, position-dependent weighting, so that every logit's gradient matters.
    weights = torch.linspace(-1.0, 1.0, logits.numel()).view_as(logits).to(logits.device)
    (logits * weights).sum().backward()
    inner = getattr(model, "module", model)  # DDP's parameter names start with "module."
    grads = {n: p.grad.detach().cpu() for n, p in inner.named_parameters() if p.grad is not None}
    return logits.detach().cpu(), grads


def optimizer_cfg(name, **extra):
    from omegaconf import OmegaConf

    cfg = dict(_name=name, adam_betas="(0.9, 0.95)", adam_eps=1e-8, weight_decay=0.1, lr=[1e-3], tpu=False)
    cfg.update(extra)
    return OmegaConf.create(cfg)


def gradients(params, steps, seed=5):
    """Random gradients for each step whose magnitudes span 1e-9 to 1: where sqrt(v) is near eps, where eps is
    added decides the update."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append([torch.randn(p.shape, generator=g) * 10.0 ** (-9.0 * torch.rand(p.shape, generator=g))
                    for p in params])
    return out


def run_steps(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(p.device)
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().cpu().clone() for p in params]


def fairseq_adam(params):
    """Fairseq's `adam` as `--optimizer adam` builds it off CUDA: its pure-Python `Adam`."""
    from fairseq.optim import build_optimizer
    from fairseq.optim.adam import Adam

    optimizer = build_optimizer(optimizer_cfg("adam"), params)
    assert isinstance(optimizer.optimizer, Adam), type(optimizer.optimizer)
    return optimizer


def copies(params, device=None):
    return [torch.nn.Parameter(p.detach().clone().to(device or p.device)) for p in params]


class RecordingSDPA:
    """A stand-in with `FusedSDPA.apply`'s positional signature: torch's math, and a record of each call."""

    calls = []

    @staticmethod
    def apply(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, softmax_mode="None",
              recompute_mode=None):
        RecordingSDPA.calls.append((tuple(q.shape), attn_mask, dropout_p, is_causal))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                                is_causal=is_causal, scale=scale)


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every read of a tensor's value back to the host (`aten._local_scalar_dense`: `.item()`,
    `bool(t)`), by the storage read."""

    def __init__(self):
        super().__init__()
        self.storages = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.storages.append(args[0].untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))

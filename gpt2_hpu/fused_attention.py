"""Fused causal self-attention for Fairseq's decoder: one `scaled_dot_product_attention` call per layer.

Fairseq's decoder self-attention reaches torch's attention with an explicit float causal mask
(`buffered_future_mask`), which rules out the fused causal kernels (flash attention on CUDA, Habana's
`FusedSDPA` on Gaudi). `use_fused_attention` switches each decoder self-attention to a subclass of
`MultiheadAttention` that, in the plain causal case, computes q, k and v with one matrix product and calls a
fused kernel with `is_causal=True`, and otherwise runs Fairseq's own code unchanged. Parameters, buffers and
state dict stay those of stock Fairseq, so checkpoints move both ways.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fairseq.modules import MultiheadAttention

try:
    from fairseq.modules.transformer_layer import TransformerDecoderLayerBase as _DecoderLayer
except ImportError:  # Fairseq releases before the *Base layer classes
    from fairseq.modules.transformer_layer import TransformerDecoderLayer as _DecoderLayer

__all__ = ["use_fused_attention", "habana_sdpa", "torch_sdpa", "FusedCausalSelfAttention"]


def torch_sdpa(q, k, v, dropout_p, is_causal=True):
    """torch's `scaled_dot_product_attention` on [batch, heads, seq, head_dim] tensors, default scale."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)


class HabanaSDPA:
    """`sdpa(q, k, v, dropout_p, is_causal=True)` through Habana's `FusedSDPA.apply`.

    `FusedSDPA` is a `torch.autograd.Function` whose `apply` takes its arguments positionally:
    `(q, k, v, attn_mask, dropout_p, is_causal, scale, softmax_mode, recompute_mode, ...)`. Only the first six
    are passed; the rest keep Habana's defaults (scale `1/sqrt(head_dim)`, the bridge's recompute setting). An
    object rather than a closure, so that a model holding it can still be pickled and deep-copied.
    """

    def __init__(self, fused_sdpa):
        self.fused_sdpa = fused_sdpa

    def __call__(self, q, k, v, dropout_p, is_causal=True):
        return self.fused_sdpa.apply(q, k, v, None, dropout_p, is_causal)

    def __eq__(self, other):
        return isinstance(other, HabanaSDPA) and other.fused_sdpa is self.fused_sdpa

    def __hash__(self):
        return hash(self.fused_sdpa)

    def __repr__(self):
        return f"habana_sdpa({getattr(self.fused_sdpa, '__name__', self.fused_sdpa)})"


def habana_sdpa(fused_sdpa):
    """The `sdpa` argument of `use_fused_attention` for Habana's `FusedSDPA` class (from
    `HpuDevice().fused_sdpa()`)."""
    return HabanaSDPA(fused_sdpa)


class FusedCausalSelfAttention(MultiheadAttention):
    """Fairseq's `MultiheadAttention` whose plain causal self-attention runs one fused kernel.

    Instances are made only by `use_fused_attention`, which changes the class of existing modules; the kernel
    is the instance attribute `fused_sdpa`.
    """

    fused_sdpa = staticmethod(torch_sdpa)
    # Set by padding.PaddingAtEnd while every batch is padded only at the end of its rows: causal attention then
    # never lets a real token see a pad, and a key padding mask changes nothing the loss reads.
    padding_at_end = False

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        incremental_state=None,
        need_weights=True,
        static_kv=False,
        attn_mask=None,
        before_softmax=False,
        need_head_weights=False,
    ):
        if self._plain_causal(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                              attn_mask, before_softmax, need_head_weights):
            return self._fused_causal(query), None
        return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                               attn_mask, before_softmax, need_head_weights)

    def _plain_causal(self, query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                      attn_mask, before_softmax, need_head_weights):
        # Fairseq's decoder passes its future mask exactly when it has no incremental state; the masks' shapes
        # are checked, never their values, which would wait for the device.
        tgt_len = query.size(0)
        padding_ignored = key_padding_mask is None or (
            self.padding_at_end and key_padding_mask.shape == (query.size(1), tgt_len))
        return (
            key is query and value is query
            and incremental_state is None and padding_ignored and attn_mask is not None
            and not need_weights and not need_head_weights and not static_kv and not before_softmax
            and attn_mask.dim() == 2 and attn_mask.size(0) == tgt_len and attn_mask.size(1) == tgt_len
            and self.self_attention and self.bias_k is None and not self.add_zero_attn
            and not self.onnx_trace and not self.skip_embed_dim_check and not getattr(self, "use_xformers", False)
            and query.device.type != "xla"
        )

    def _fused_causal(self, x):
        tgt_len, bsz, embed_dim = x.size()

        def heads(t):  # [T, B, C] -> [B, H, T, D]
            return t.view(tgt_len, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        dropout = self.dropout_module
        # Stock Fairseq drops attention weights in training, or always with apply_during_inference.
        dropout_p = dropout.p if (self.training or dropout.apply_during_inference) else 0.0
        q, k, v = self._project_qkv(x)
        # No explicit scale: the kernels' default, 1/sqrt(head_dim), is Fairseq's `self.scaling`.
        out = self.fused_sdpa(heads(q), heads(k), heads(v), dropout_p, is_causal=True)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim))

    def _project_qkv(self, x):
        """q, k and v from one matrix product over the three projections' weights, concatenated for this call:
        one product three times as wide keeps the matrix unit busier than three small ones, and reads x once.
        The parameters stay the three of stock Fairseq. Projections with hooks (Fairseq's quant noise is one)
        run as they are."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if not all(_plain_linear(p) for p in projections) or len({p.bias is None for p in projections}) > 1:
            return tuple(p(x) for p in projections)
        weight = torch.cat([p.weight for p in projections])
        bias = None if self.q_proj.bias is None else torch.cat([p.bias for p in projections])
        return F.linear(x, weight, bias).chunk(3, dim=-1)


def _plain_linear(module):
    return type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks


def decoder_self_attentions(model):
    """Every self-attention module of a Fairseq Transformer decoder layer in `model`."""
    return [layer.self_attn for layer in model.modules()
            if isinstance(layer, _DecoderLayer) and isinstance(getattr(layer, "self_attn", None), MultiheadAttention)]


def use_fused_attention(model, sdpa=None):
    """Makes every decoder self-attention of `model` use `sdpa` in the plain causal case; returns how many changed.

    `sdpa(q, k, v, dropout_p, is_causal=True)` takes [batch, heads, seq, head_dim] tensors and uses the default
    scale; None means `torch_sdpa` (`torch.nn.functional.scaled_dot_product_attention`); on Gaudi pass
    `habana_sdpa(HpuDevice().fused_sdpa())`. The plain case is what training and scoring do: query, key and
    value the same tensor, no incremental state, no key padding (or padding known to sit at the end of the rows:
    padding.py), no attention weights asked for, and the decoder's [T, T] future mask. Everything else
    (generation, other padded batches, cross or encoder attention) runs Fairseq's code. Modules already switched
    only have their kernel replaced, so calling this again with the same `sdpa` changes nothing and returns 0.
    Subclasses of `MultiheadAttention` with their own `forward` are left alone. Call it before wrapping the model
    in DDP or `torch.compile`.
    """
    sdpa = torch_sdpa if sdpa is None else sdpa
    changed = 0
    for attn in decoder_self_attentions(model):
        if type(attn) is MultiheadAttention:
            attn.__class__ = FusedCausalSelfAttention
        elif not isinstance(attn, FusedCausalSelfAttention) or attn.fused_sdpa == sdpa:
            continue
        attn.fused_sdpa = sdpa
        changed += 1
    return changed


def fused_attention_count(model):
    """How many decoder self-attentions of `model` use a fused kernel."""
    return sum(isinstance(attn, FusedCausalSelfAttention) for attn in decoder_self_attentions(model))

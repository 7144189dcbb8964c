"""Emulated `habana_frameworks.torch.hpex.kernels.FusedSDPA` with CPU math (positional arguments)."""
import torch
import torch.nn.functional as F

__all__ = ["FusedSDPA"]


class FusedSDPA:
    """`FusedSDPA.apply(q, k, v, attn_mask, dropout_p, is_causal, scale, softmax_mode, recompute_mode,
    valid_seq_len, seq_padding_type, return_dropout_mask, return_attn_probs)`, layout [batch, heads, seq, dim]."""

    @staticmethod
    def apply(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, softmax_mode="None",
              recompute_mode=None, valid_seq_len=None, seq_padding_type="left", return_dropout_mask=False,
              return_attn_probs=False):
        requires_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if valid_seq_len is not None:
            assert not requires_backward, "valid_seq_len is supported in inference only"
            assert is_causal and attn_mask is None, "valid_seq_len requires is_causal=True and attn_mask=None"
        if return_attn_probs:
            assert not requires_backward, "return_attn_probs is supported in inference only"
        if str(softmax_mode).lower() == "fast" and requires_backward and recompute_mode:
            assert is_causal, "fast softmax in recompute training requires is_causal=True"
        if q.dim() == 4 and q.size(1) != k.size(1) and k.size(1) != 1:
            # grouped-query attention: what torch's enable_gqa does (torch >= 2.5 only), spelled out
            k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
            v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
        if attn_mask is not None and is_causal:
            # Allowed on Gaudi (inference); torch rejects the combination, so fold causality into the mask.
            causal = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
            if attn_mask.dtype == torch.bool:
                attn_mask = attn_mask & causal
            else:
                attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
            is_causal = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)

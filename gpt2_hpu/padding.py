"""Padding without a device sync: with fused causal attention, Fairseq's per-batch padding test is not needed.

Fairseq's decoder asks the device, for every batch, whether the batch holds any padding
(`prev_output_tokens.eq(pad).any()` in `extract_features_scriptable`) and builds the self-attention key padding
mask only if it does. The answer is a device-to-host read: the host waits for all the device work queued so far
(the previous micro-batch's backward) before it can queue the next forward; in HPU lazy mode it cuts the graph,
and under `torch.compile` it is a graph break. That is one sync per micro-batch, 8 per update in the seed recipe.

When every row's padding is at its end, as Fairseq's language-modeling collater makes it (`left_pad=False`),
causal attention never lets a real token see a pad: token i attends to positions <= i, and those are all real.
The key padding mask then changes only the outputs at pad positions, which the loss ignores as long as the
target is pad there too (the collater pads both; a pad symbol written in the text is a real input). So, with fused
attention:
- the decoder always builds the mask (a device op, no read): Fairseq's decoder skips its test when its
  `cross_self_attention` attribute is true, and reads that attribute nowhere else (0.12.2 and later main; the
  layers keep their own copy, which is untouched);
- the fused attention ignores a key padding mask (`FusedCausalSelfAttention.padding_at_end`);
- the trainer checks each batch's input and target on the host, before it is moved (`PaddingAtEnd.check`), which
  costs no device read. The first batch padded anywhere else, or not on the host, turns both back to Fairseq's
  behaviour for the rest of the run, with one log line: the decoder tests for padding again and the attention
  applies the mask (Fairseq's code).
"""
import logging

import torch

from fairseq.models.transformer import TransformerDecoderBase

from gpt2_hpu.fused_attention import FusedCausalSelfAttention

logger = logging.getLogger(__name__)

__all__ = ["PaddingAtEnd", "skip_padding_test", "padded_at_end", "decoder_tokens"]


def padded_at_end(tokens, pad, target=None):
    """Whether every row of a [batch, time] host tensor has its `pad` tokens only at its end, and, given the
    batch's target, whether the target is pad wherever the input is (a literal pad symbol in the text is an input
    pad whose output the loss reads)."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        return False
    is_pad = tokens.eq(pad)
    # A pad followed by a real token is padding before the end.
    if bool((is_pad[:, :-1] & ~is_pad[:, 1:]).any()):
        return False
    if target is None:
        return True
    return torch.is_tensor(target) and target.shape == tokens.shape and bool(target[is_pad].eq(pad).all())


def decoder_tokens(sample):
    """The tokens a batch feeds the decoder: `prev_output_tokens` for encoder-decoder models, `src_tokens` for
    Fairseq's language models (whose forward passes them on as the decoder's `prev_output_tokens`)."""
    net_input = sample.get("net_input") if isinstance(sample, dict) else None
    if not isinstance(net_input, dict):
        return None
    return net_input.get("prev_output_tokens", net_input.get("src_tokens"))


def skip_padding_test(model, skip):
    """Turns Fairseq's padding test off (`skip`) or back on in the decoders of `model` whose self-attentions are
    all fused (an unfused one would see pads without the mask); returns the pad indices of those decoders."""
    pads = set()
    for decoder in model.modules():
        if not isinstance(decoder, TransformerDecoderBase):
            continue
        layers = getattr(decoder, "layers", None)
        # children(), not iteration: with --decoder-layerdrop, iterating the layers in training mode skips some.
        attentions = [getattr(layer, "self_attn", None)
                      for layer in (layers.children() if isinstance(layers, torch.nn.Module) else [])]
        if not attentions or not all(isinstance(a, FusedCausalSelfAttention) for a in attentions):
            continue
        if skip and decoder.cross_self_attention and not attentions[0].padding_at_end:
            continue  # cross self-attention configured: Fairseq always builds the mask, the attention applies it
        if not skip and not attentions[0].padding_at_end:
            continue  # never turned off here
        # The decoder's own copy of the option; its layers keep theirs (False).
        decoder.cross_self_attention = skip
        for attention in attentions:
            attention.padding_at_end = skip
        pads.add(decoder.padding_idx)
    return pads


class PaddingAtEnd:
    """Turns Fairseq's padding test off in `model` (skip_padding_test), and back on, for good, at the first batch
    padded anywhere but at the end of its rows, in `model` and in any copy of it the caller names then (an EMA
    copy, made after this, copies the switched-off test)."""

    def __init__(self, model):
        self._pads = skip_padding_test(model, True)
        self.active = bool(self._pads)
        if self.active:
            logger.info("padding: the decoder masks padding without testing for it on the device; each batch is "
                        "checked on the host")

    def check(self, sample, models):
        """Called with each batch while it is still on the host (not with Fairseq's dummy batch, a batch already
        checked); `models` are those to switch back if the batch is padded before its end. A batch whose tokens
        are not on the host cannot be checked without a device read, and switches back too."""
        if not self.active or not sample:
            return
        tokens, target = decoder_tokens(sample), sample.get("target")
        on_host = all(not torch.is_tensor(t) or t.device.type == "cpu" for t in (tokens, target))
        if on_host and all(padded_at_end(tokens, pad, target) for pad in self._pads):
            return
        self.active = False
        for model in models:
            skip_padding_test(model, False)
        logger.info("padding: a batch is %s; Fairseq's decoder tests each batch for padding again (one device read "
                    "per batch) and the attention applies the mask (under --compile: one recompilation)"
                    % ("padded before the end of its rows" if on_host else "already on the device"))

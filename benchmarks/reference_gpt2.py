#!/usr/bin/env python
"""The plain-PyTorch reference for the throughput benchmark: Fairseq's `transformer_lm_gpt` written out as one
small module and trained by a bare loop, with everything the fast path uses and nothing else.

What it shares with Fairseq's model, so that its tokens/s is what the same kernels give without a framework
around them: the same parameters (a Fairseq checkpoint's decoder loads into it, `load_fairseq_decoder`), pre-norm
layers, embeddings scaled by sqrt(d), sinusoidal positions counted from the padding index, exact GELU in fp32,
dropout after the embeddings, the attention and each residual branch, attention dropout, a final layer norm, the
output projection tied to the embeddings, and a summed cross-entropy in fp32 over the update's tokens. What it
leaves out: padding (the benchmark's batches have none), incremental decoding and everything else a Fairseq
trainer does around an update. Fairseq's own dummy_lm batch (tokens pad+1 .. pad+T) is copied from pinned host
memory for every micro-batch, as Fairseq's loader would.

The fast path's levers, on the device the run names: bf16 autocast with fp32 weights (CUDA; fp32 on CPU, as
`--fast-path`), q, k and v from one matrix product and `scaled_dot_product_attention(is_causal=True)`, torch's
fused AdamW with Fairseq adam's decoupled weight decay, clipping without a host read, and `torch.compile` over the
model and its loss. The host reads the loss once every `--log-interval` updates, and nowhere else.

It takes the throughput benchmark's Fairseq command line and ignores what it does not know, so a preset means the
same model and batch here as there:

    python benchmarks/reference_gpt2.py --dict-size 50260 --tokens-per-sample 1024 --batch-size 8 \
        --update-freq 8 --max-update 40 --log-interval 10 [--cpu]

Each log line is Fairseq's `train_inner` JSON subset that the benchmark reads (num_updates, wpb, loss in base 2);
the last line is the benchmark's result line.
"""
import argparse
import ast
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

RESULT_TAG = "TRAIN_THROUGHPUT_RESULT "
PAD = 1  # Fairseq's dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # transformer_lm_gpt's sizes unless the command gives others
    p.add_argument("--dict-size", type=int, default=50260)
    p.add_argument("--decoder-layers", type=int, default=12)
    p.add_argument("--decoder-embed-dim", type=int, default=768)
    p.add_argument("--decoder-ffn-embed-dim", type=int, default=3072)
    p.add_argument("--decoder-attention-heads", type=int, default=12)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.1)
    p.add_argument("--tokens-per-sample", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--update-freq", type=int, default=1)
    p.add_argument("--max-update", type=int, default=40)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup-updates", type=int, default=1000)
    p.add_argument("--warmup-init-lr", type=float, default=1e-7)
    p.add_argument("--adam-betas", type=ast.literal_eval, default=(0.9, 0.95))
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="train without torch.compile (a quick check)")
    args, _ = p.parse_known_args(argv)  # the rest is Fairseq's
    return args


def vocabulary_size(dict_size):
    """Fairseq dummy_lm's dictionary: four specials, then the words, padded to a multiple of 8."""
    return -(-(dict_size + 4) // 8) * 8


def sinusoidal_positions(num, dim, padding_idx=PAD):
    """Fairseq's sinusoidal table (tensor2tensor's layout: all sines, then all cosines), rows for positions
    padding_idx+1 .. padding_idx+num: the positions Fairseq gives a sequence without padding."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angle = torch.arange(padding_idx + 1, padding_idx + 1 + num, dtype=torch.float).unsqueeze(1) * freq
    table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
    return F.pad(table, (0, dim % 2))


class Block(nn.Module):
    def __init__(self, dim, ffn, heads, dropout, attention_dropout):
        super().__init__()
        self.heads, self.dropout, self.attention_dropout = heads, dropout, attention_dropout
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(b, t, c)), self.dropout, self.training)
        h = self.fc1(self.ffn_norm(x))
        h = F.gelu(h.float()).type_as(h)  # Fairseq's gelu: exact, in fp32
        return x + F.dropout(self.fc2(h), self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, vocab, layers, dim, ffn, heads, max_len, dropout, attention_dropout):
        super().__init__()
        self.dropout = dropout
        self.embed_scale = math.sqrt(dim)
        self.tokens = nn.Embedding(vocab, dim, padding_idx=PAD)
        nn.init.normal_(self.tokens.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.tokens.weight[PAD].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_len, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, ffn, heads, dropout, attention_dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens, target):
        """The summed cross-entropy (fp32) of `target` given `tokens`, both [batch, time]."""
        x = self.embed_scale * self.tokens(tokens) + self.positions[: tokens.size(1)]
        x = F.dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm(x), self.tokens.weight)
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="sum")


def build_model(args):
    """The GPT of this command line's sizes, on the CPU."""
    return GPT(vocabulary_size(args.dict_size), args.decoder_layers, args.decoder_embed_dim,
               args.decoder_ffn_embed_dim, args.decoder_attention_heads, args.tokens_per_sample, args.dropout,
               args.attention_dropout)


def load_fairseq_decoder(model, state):
    """Copies a Fairseq transformer_lm state dict (`decoder.` keys, separate q/k/v projections) into `model`."""
    ours = {"tokens.weight": state["decoder.embed_tokens.weight"]}
    for prefix in ("weight", "bias"):
        ours["norm." + prefix] = state["decoder.layer_norm." + prefix]
    for i in range(len(model.blocks)):
        f, o = "decoder.layers.%d." % i, "blocks.%d." % i
        for part in ("weight", "bias"):
            ours[o + "qkv." + part] = torch.cat([state[f + "self_attn.%s_proj.%s" % (n, part)] for n in "qkv"])
            for mine, theirs in (("out", "self_attn.out_proj"), ("attn_norm", "self_attn_layer_norm"),
                                 ("ffn_norm", "final_layer_norm"), ("fc1", "fc1"), ("fc2", "fc2")):
                ours[o + mine + "." + part] = state[f + theirs + "." + part]
    model.load_state_dict(ours)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    bf16 = device.type == "cuda"
    model = build_model(args).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.warmup_init_lr, betas=tuple(args.adam_betas),
                                  eps=args.adam_eps, weight_decay=args.weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    loss_fn = model if args.no_compile else torch.compile(model, dynamic=False)

    seq = torch.arange(args.tokens_per_sample + 1) + PAD + 1  # Fairseq's dummy_lm sequence
    batch = seq.expand(args.batch_size, -1).contiguous()
    host_tokens, host_target = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    if device.type == "cuda":
        host_tokens, host_target = host_tokens.pin_memory(), host_target.pin_memory()
    tokens_per_update = args.batch_size * args.tokens_per_sample * args.update_freq

    from device_facts import device_facts, page_faults  # beside this script, on the path when it runs as one

    marks, loss_sum = [], torch.zeros((), device=device)
    for update in range(1, args.max_update + 1):
        lr = args.warmup_init_lr + (args.lr - args.warmup_init_lr) * min(1.0, update / args.warmup_updates)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(args.update_freq):
            tokens = host_tokens.to(device, non_blocking=True)
            target = host_target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(tokens, target)
            (loss / tokens_per_update).backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update % args.log_interval == 0 or update == args.max_update:
            done = update - (marks[-1][1] if marks else 0)
            loss_bits = loss_sum.item() / (done * tokens_per_update) / math.log(2)  # the one host read
            marks.append([time.perf_counter(), update, float(tokens_per_update), time.process_time(), loss_bits,
                          page_faults()])
            loss_sum.zero_()
            print(json.dumps({"num_updates": update, "wpb": tokens_per_update, "loss": round(loss_bits, 3)}),
                  flush=True)

    name, peak, kind = device_facts(device.type == "cuda")
    print(RESULT_TAG + json.dumps({
        "marks": marks, "overflows": 0, "plugin_loaded": False, "torch": torch.__version__, "fairseq": None,
        "python": platform.python_version(), "device_name": name, "peak_mem_bytes": peak, "peak_mem_kind": kind,
        "compiled": not args.no_compile, "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

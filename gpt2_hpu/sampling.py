"""`gpt2-hpu-sample`: a checkpoint continues a prompt, on the HPU, CUDA or the CPU.

    gpt2-hpu-sample --path CKPT --data DATA --device auto|hpu|cuda|cpu --prompt TEXT --tokens N --seed S

The data folder's dictionary holds GPT-2 BPE ids written as text (what gpt2-hpu-prepare writes): the prompt is
encoded and the continuation decoded with GPT-2's BPE. Each new token is drawn from the `--top-k` most likely
ones at `--temperature`; symbols that are not BPE ids (<unk>, padding) are never drawn. The draws come from a CPU
generator seeded with `--seed`, so a seed gives the same text on every device (up to the device's arithmetic).
The text goes to stdout.
"""
import argparse
import os
import sys
import warnings

from gpt2_hpu.errors import Gpt2HpuError, UsageError

PROG = "gpt2-hpu-sample"
DEVICES = ("auto", "hpu", "cuda", "cpu")


class SamplingDevice:
    """Where the model runs: a torch device, and what ends each token's step there (HPU lazy mode: a
    mark_step, so each token is one graph)."""

    def __init__(self, torch_device, description, end_step=None):
        self.torch_device = torch_device
        self.description = description
        self._end_step = end_step

    def end_step(self):
        if self._end_step is not None:
            self._end_step()


def sampling_device(name):
    """The device named `name` ("auto": the best one here, as the demo trains on)."""
    import torch

    from gpt2_hpu import device

    if name == "auto":
        name = device.best_available()[0]
    if name == "hpu":
        hpu = device.activate()
        return SamplingDevice(hpu.torch_device, f"hpu ({'lazy' if hpu.lazy else 'eager'} mode)", hpu.mark_step)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA device here: use --device auto, hpu or cpu",
                             prog=PROG)
        return SamplingDevice(torch.device("cuda"), "cuda")
    return SamplingDevice(torch.device("cpu"), "cpu")


def load(checkpoint, data_dir=None):
    """(model in eval mode on the CPU, its dictionary, its context window) from a Fairseq checkpoint."""
    if not os.path.isfile(checkpoint):
        raise UsageError(f"no checkpoint at {checkpoint}: give --path the .pt file a training run saved", prog=PROG)
    if data_dir is not None and not os.path.isfile(os.path.join(data_dir, "dict.txt")):
        raise UsageError(f"{data_dir} has no dict.txt: give --data the folder the checkpoint was trained on",
                         prog=PROG)
    from fairseq import checkpoint_utils

    overrides = {} if data_dir is None else {"data": str(data_dir)}
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides=overrides)
    except FileNotFoundError as e:  # the dictionary of the training data folder the checkpoint names
        raise UsageError(f"{e}: give --data the folder the checkpoint was trained on", prog=PROG) from None
    model = models[0].eval().float()
    return model, task.target_dictionary, model.max_positions()


def bpe_symbols(dictionary, encoding):
    """For each dictionary index, whether its symbol is a GPT-2 BPE id (eos counts: it decodes as a newline)."""
    import torch

    def is_bpe(symbol):
        return symbol.isdigit() and int(symbol) < encoding.n_vocab

    mask = torch.tensor([is_bpe(s) for s in dictionary.symbols])
    if int(mask.sum()) == 0:
        raise UsageError("the dictionary's symbols are not GPT-2 BPE ids: sampling needs data prepared by "
                         "gpt2-hpu-prepare (or fairseq-preprocess of GPT-2 BPE ids)", prog=PROG)
    mask[dictionary.eos()] = True
    return mask


def padded_length(n, window):
    """Inputs are padded to a power of two (at most the window): a handful of shapes, so a graph-compiling
    device (HPU lazy mode, torch.compile) compiles a handful of graphs rather than one per length."""
    length = 8
    while length < n:
        length *= 2
    return min(length, window)


def sample_ids(model, context, steps, device, allowed, window, top_k=40, temperature=0.8, seed=0):
    """`context` (dictionary indices) followed by `steps` sampled ones, on `device` (a SamplingDevice)."""
    import torch

    model.to(device.torch_device)
    pad = model.decoder.padding_idx
    k = min(top_k, int(allowed.sum()))
    allowed = allowed.to(device.torch_device)
    generator = torch.Generator().manual_seed(seed)
    context = list(context)
    with torch.no_grad(), warnings.catch_warnings():
        # Fairseq's decoder gives attention a bool padding mask beside its float causal mask; torch warns on every
        # padded input, and the two masks are right as they are.
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
        for _ in range(steps):
            visible = context[-window:]
            # Right padding: with the causal mask no real position sees a pad, and learned positions count real
            # tokens only, so the last real position's logits are those of the unpadded input.
            tokens = visible + [pad] * (padded_length(len(visible), window) - len(visible))
            logits = model(torch.tensor([tokens]).to(device.torch_device))[0][0, len(visible) - 1].float()
            logits = logits.masked_fill(~allowed, float("-inf"))
            top = torch.topk(logits, k)
            device.end_step()
            probs = torch.softmax(top.values.cpu() / temperature, dim=-1)
            context.append(int(top.indices.cpu()[torch.multinomial(probs, 1, generator=generator)]))
    return context


def sample(checkpoint, data_dir=None, prompt="", tokens=60, seed=0, device="cpu", top_k=40, temperature=0.8):
    """The prompt and its continuation as text; `device` is a name (auto, hpu, cuda, cpu)."""
    from gpt2_hpu.data.bpe import VocabSource

    target = sampling_device(device)
    model, dictionary, window = load(checkpoint, data_dir)
    encoding = VocabSource.parse().build()
    allowed = bpe_symbols(dictionary, encoding)
    context = [dictionary.eos()] + [dictionary.index(str(t)) for t in encoding.encode_ordinary(prompt)]
    ids = sample_ids(model, context, tokens, target, allowed, window, top_k, temperature, seed)
    return prompt + decode(ids[len(context):], dictionary, encoding)


def decode(indices, dictionary, encoding):
    """Dictionary indices to text: runs of BPE ids decoded together (a character may span tokens), eos as a
    newline."""
    pieces, run = [], []
    for index in indices:
        if index == dictionary.eos():
            pieces.append(encoding.decode(run) + "\n")
            run = []
        else:
            run.append(int(dictionary[index]))
    pieces.append(encoding.decode(run))
    return "".join(pieces)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="the checkpoint (.pt) to sample from")
    parser.add_argument("--data", help="its data folder (dict.txt); default: the folder it was trained on")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the model runs; auto: HPU (or its emulation), else CUDA, else the CPU")
    parser.add_argument("--prompt", default="", help="the text to continue")
    parser.add_argument("--tokens", type=int, default=60, help="how many BPE tokens to add")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--top-k", type=int, default=40, help="draw among this many most likely tokens")
    parser.add_argument("--temperature", type=float, default=0.8, help="divides the logits before the softmax")
    args = parser.parse_args(argv)
    if args.tokens < 0 or args.top_k < 1 or args.temperature <= 0:
        parser.error("--tokens must be >= 0, --top-k >= 1 and --temperature > 0")
    try:
        text = sample(args.path, args.data, args.prompt, args.tokens, args.seed, args.device, args.top_k,
                      args.temperature)
    except Gpt2HpuError as e:  # also HabanaUnavailable for --device hpu
        e.prog = PROG
        e.exit()
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training checks: real Fairseq, through the plugin, on a tiny GPT-2 and a dataset made here.

Each run is a child process (`gpt2-hpu-train` as a -c statement); this module only writes the data, builds
the command lines and reads the logs and checkpoints back.
"""
import json
import math
import os
import re

import numpy as np

from gpt2_hpu.selfcheck.children import Failed, Skipped, python_command

# A 2-layer, 64-wide GPT-2: seconds per run, and every code path of GPT-2 small. update-freq 2 and clip-norm
# (which clips here) take in the micro-batch mark_steps and Habana's fused clip-norm.
TINY_GPT2 = [
    "--task", "language_modeling", "--arch", "transformer_lm_gpt",
    "--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
    "--decoder-attention-heads", "2", "--share-decoder-input-output-embed", "--decoder-learned-pos",
    "--tokens-per-sample", "32", "--sample-break-mode", "none", "--batch-size", "4", "--update-freq", "2",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.95)", "--lr", "0.002", "--weight-decay", "0.1",
    "--lr-scheduler", "fixed", "--clip-norm", "1.0",
    "--seed", "3", "--num-workers", "0", "--log-format", "json", "--log-interval", "1",
    "--no-epoch-checkpoints", "--disable-validation",
]
# HPU random streams do not match the CPU's, so runs compared with the CPU draw no random numbers.
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0"]
UPDATES = 4

# Relative difference allowed between each logged HPU loss and the CPU's. Both run in fp32 from the same
# initial weights and batches; the HPU sums in another order and fuses ops, which moves a loss by ~1e-6
# relative per step, ~1e-5 after these few Adam updates, and Fairseq logs losses to 3 decimals (~5e-5
# relative at these values). What the check is for — a batch left on the host, a missed or stale lazy graph,
# a skipped update, a broken clip — moves the loss by 1e-2 or more.
LOSS_RTOL = 1e-3

# Dropout + activation checkpointing: the recompute must replay the forward's dropout masks. Weights after a
# few updates then equal those of the run without checkpointing up to float noise (bit-equal on the CPU).
# Adam turns a rare near-zero gradient into a full-size step of either sign, so count the weights that differ
# by more than a twentieth of one step (lr 2e-3): replayed masks leave ~none; new masks move most of them
# (80% measured on the CPU with the RNG restore removed).
WEIGHT_ATOL = 1e-4
MAX_DIFFERING_SHARE = 0.01

TRAIN = "import sys; from gpt2_hpu.cli import train_main; sys.argv[0] = 'gpt2-hpu-train'; train_main()"
# "| train_inner | {...}" from fairseq-train's own logging, "INFO:train_inner:{...}" from spawned ranks.
_LOG = re.compile(r"\btrain_inner\b[^{]*(\{.*\})\s*$")
_ZERO_SHARES = re.compile(r"ZeRO-1 optimizer state per rank: \[([\d, ]+)\]")


def write_dataset(folder, vocabulary=120, sequences=400, seed=0):
    """A Fairseq language-modelling dataset (dict.txt, train and valid .bin/.idx) of token ids from a fixed
    random Markov chain: something a model can learn, so gradients are those of real training. (Fairseq 0.12.2
    loads the valid split even with --disable-validation.)"""
    from gpt2_hpu.data.dictionary import EOS_INDEX, TokenDictionary
    from gpt2_hpu.data.indexed import best_fitting_dtype, write_index

    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    successors = rng.randint(0, vocabulary, size=(vocabulary, 3))
    lines, token = [], 0
    for _ in range(sequences + sequences // 10):
        line = []
        for _ in range(rng.randint(8, 40)):
            token = successors[token, rng.randint(3)] if rng.rand() < 0.9 else rng.randint(vocabulary)
            line.append(token)
        lines.append(np.array(line))
    splits = {"train": lines[:sequences], "valid": lines[sequences:]}
    dictionary = TokenDictionary.from_counts(np.bincount(np.concatenate(splits["train"]), minlength=vocabulary))
    with open(os.path.join(folder, "dict.txt"), "wb") as f:
        f.write(dictionary.save_text())
    table = dictionary.lookup_table(vocabulary, vocabulary)
    dtype = best_fitting_dtype(len(dictionary))
    for split, split_lines in splits.items():
        prefix = os.path.join(folder, split)
        with open(prefix + ".bin", "wb") as f:
            for line in split_lines:
                f.write(np.append(table[line], EOS_INDEX).astype(dtype).tobytes())
        np.array([len(line) + 1 for line in split_lines], dtype=np.int32).tofile(prefix + ".sizes")
        write_index(prefix + ".idx", dtype, prefix + ".sizes")
        os.remove(prefix + ".sizes")
    return folder


def _data(ctx):
    return ctx.once("data", lambda: write_dataset(os.path.join(ctx.workdir, "data")))


def _train(ctx, label, save_dir, *extra, mode=None):
    cmd = python_command(TRAIN, _data(ctx), *TINY_GPT2, "--save-dir", save_dir, *extra)
    return ctx.run(label, cmd, mode=mode).output


def _records(output):
    return [json.loads(m.group(1)) for m in map(_LOG.search, output.splitlines()) if m]


def _losses(output, label, updates):
    records = _records(output)
    got = [int(float(r["num_updates"])) for r in records]
    if got != list(range(1, updates + 1)):
        raise Failed(f"{label}: logged updates {got}, expected 1..{updates}")
    losses = [float(r["loss"]) for r in records]
    if not all(math.isfinite(x) for x in losses):
        raise Failed(f"{label}: losses {losses} are not all finite")
    return losses, records


def _cpu_reference(ctx):
    out = _train(ctx, "CPU reference run", os.path.join(ctx.workdir, "cpu"), "--cpu", *NO_DROPOUT,
                 "--max-update", str(UPDATES))
    return _losses(out, "CPU reference run", UPDATES)[0]


def check_training(mode):
    def check(ctx):
        reference = ctx.once("cpu-losses", lambda: _cpu_reference(ctx))
        label = f"{mode} training"
        out = _train(ctx, label, os.path.join(ctx.workdir, f"train-{mode}"), "--hpu", *NO_DROPOUT,
                     "--max-update", str(UPDATES), mode=mode)
        losses, records = _losses(out, label, UPDATES)
        diffs = [abs(h - c) / abs(c) for h, c in zip(losses, reference)]
        worst = max(range(UPDATES), key=lambda i: diffs[i])
        if diffs[worst] > LOSS_RTOL:
            raise Failed(f"update {worst + 1}: loss {losses[worst]} on HPU, {reference[worst]} on CPU "
                         f"(relative difference {diffs[worst]:.1e} > {LOSS_RTOL:.0e}); HPU {losses}, CPU {reference}")
        mark_steps = [float(r.get("mark_steps", "nan")) for r in records]
        # Lazy mode runs nothing without mark_steps; in eager mode the plugin must not call any.
        if any(math.isnan(m) for m in mark_steps):
            raise Failed(f"{label}: no mark_steps in the training log, so --hpu was not in effect")
        if (mode == "lazy") != (min(mark_steps) > 0):
            raise Failed(f"{label}: {mark_steps[0]:g} mark_steps per update in {mode} mode")
        return (f"{UPDATES} updates, losses equal the CPU run's (largest relative difference {diffs[worst]:.1e}, "
                f"limit {LOSS_RTOL:.0e}); {mark_steps[0]:g} mark_steps per update")
    return check


def check_dropout_checkpointing(ctx):
    mode = ctx.device_info()["mode"]
    runs = []
    for name, extra in (("plain", []), ("checkpointed", ["--checkpoint-activations"])):
        save_dir = os.path.join(ctx.workdir, f"dropout-{name}")
        _train(ctx, f"dropout run, {name}", save_dir, "--hpu", "--dropout", "0.1", "--attention-dropout", "0.1",
               "--max-update", "3", *extra)
        runs.append(os.path.join(save_dir, "checkpoint_last.pt"))
    value = ctx.probe("checkpoint comparison", "compare", runs[0], runs[1], WEIGHT_ATOL)
    if value["updates"][0] != value["updates"][1]:
        raise Failed(f"the runs ended at updates {value['updates']}")
    share = value["differing"] / max(value["numel"], 1)
    if value["max_abs"] == 0:
        summary = f"weights bit-equal after {value['updates'][0]} updates"
    else:
        summary = (f"{share:.2%} of {value['numel']} weights differ by more than {WEIGHT_ATOL:.0e} after "
                   f"{value['updates'][0]} updates (largest difference {value['max_abs']:.1e}, in {value['worst']})")
    if share > MAX_DIFFERING_SHARE:
        raise Failed(f"the recompute does not replay the dropout masks: {summary}")
    return f"{mode} mode, dropout 0.1, with and without --checkpoint-activations: {summary}"


def check_zero1_checkpoint(ctx):
    cards = ctx.card_count()
    if cards < 2:
        raise Skipped(f"needs 2 cards, found {cards}")
    save_dir = os.path.join(ctx.workdir, "zero1")
    zero = ["--hpu", *NO_DROPOUT, "--distributed-world-size", "2", "--zero-sharding", "os"]
    first = _train(ctx, "ZeRO-1 run", save_dir, *zero, "--max-update", "2")
    shares = _ZERO_SHARES.search(first)
    if not shares:
        raise Failed("ZeRO-1 run: no 'ZeRO-1 optimizer state per rank' line: the optimizer state was not sharded")
    if not os.path.exists(os.path.join(save_dir, "checkpoint_last.pt")):
        raise Failed("ZeRO-1 run: no checkpoint_last.pt saved")
    resumed = _train(ctx, "ZeRO-1 resume", save_dir, *zero, "--max-update", "3")
    if "Loaded checkpoint" not in resumed:
        raise Failed("ZeRO-1 resume: the checkpoint was not loaded")
    updates = [int(float(r["num_updates"])) for r in _records(resumed)]
    if updates != [3]:
        raise Failed(f"ZeRO-1 resume: logged updates {updates}, expected [3] (continuing from update 2)")
    return (f"2 ranks, optimizer state per rank [{shares.group(1)}]; saved at update 2, loaded, "
            f"trained update 3")

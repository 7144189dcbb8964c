"""Shared fixtures: a tiny real-text Fairseq dataset, tiny model flags, and CLI runners."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "gpt2_hpu"
BIN = Path(sys.executable).parent

# A 2-layer, 64-wide GPT: fast on 2 CPU cores, same code paths as GPT-2 small.
TINY_MODEL = [
    "--task", "language_modeling", "--arch", "transformer_lm_gpt",
    "--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
    "--decoder-attention-heads", "2", "--share-decoder-input-output-embed", "--decoder-learned-pos",
    "--tokens-per-sample", "32", "--sample-break-mode", "none", "--batch-size", "4",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.95)", "--lr", "0.002", "--weight-decay", "0.1",
    "--lr-scheduler", "cosine", "--warmup-updates", "2", "--warmup-init-lr", "1e-07",
    "--seed", "3", "--num-workers", "0", "--log-format", "json", "--log-interval", "1",
    "--no-epoch-checkpoints", "--no-last-checkpoints", "--disable-validation",
]


def _write_split(path, lines, dictionary):
    import torch
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(str(path) + ".bin", "mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(torch.IntTensor(dictionary.encode_line(line, add_if_not_exist=False).tolist()))
    builder.finalize(str(path) + ".idx")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Python's own reference-manual text (pydoc_data), whitespace-tokenized, binarized for Fairseq."""
    from fairseq.data import Dictionary
    from pydoc_data.topics import topics

    lines = [ln.strip() for text in topics.values() for ln in text.splitlines() if ln.strip()]
    train, valid = lines[:2500], lines[2500:2700]
    d = Dictionary()
    for line in train:
        for word in line.split():
            d.add_symbol(word)
    # A capped vocabulary keeps the embedding from dominating the model (ZeRO shards by parameter).
    d.finalize(threshold=2, nwords=500, padding_factor=8)
    out = tmp_path_factory.mktemp("tiny-data")
    d.save(str(out / "dict.txt"))
    _write_split(out / "train", train, d)
    _write_split(out / "valid", valid, d)
    return out


def emulation_env(devices=1, mode="lazy", **extra):
    env = dict(os.environ)
    env.pop("GPT2_HPU_EMULATE", None)
    env.pop("PT_HPU_LAZY_MODE", None)
    if devices:
        env["GPT2_HPU_EMULATE"] = str(devices)
    if mode is not None:
        env["PT_HPU_LAZY_MODE"] = "1" if mode == "lazy" else "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, env=None, timeout=300, cwd=None):
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    return proc


def fairseq_train(args, env=None, timeout=300, entry="fairseq-train"):
    """Runs Fairseq's training CLI: "fairseq-train", "python -m", or our "gpt2-hpu-train"."""
    if entry == "python -m":
        cmd = [sys.executable, "-m", "fairseq_cli.train", *args]
    else:
        cmd = [BIN / entry, *args]
    proc = run(cmd, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.output[-4000:]
    return proc


# fairseq-train writes "| train_inner | {...}", Hydra's logging "[train_inner][INFO] - {...}".
_LOG = re.compile(r"(?:\| |\[)(train_inner|train|valid)(?: \| |\]\[INFO\] - )(\{.*\})\s*$")


def log_records(output, kind):
    """The JSON stats Fairseq logged for `kind` (train_inner, train or valid), in order."""
    records = []
    for line in output.splitlines():
        m = _LOG.search(line)
        if m and m.group(1) == kind:
            records.append(json.loads(m.group(2)))
    return records

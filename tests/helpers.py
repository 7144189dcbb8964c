"""What the tests share: paths, a tiny model's flags, runners for the commands, and real offline text and
stock-pipeline files for the data tests. Fixtures live in conftest.py; tests import these from here."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from gpt2_hpu.data.bpe import PACKAGED_VOCAB, bytes_to_unicode, load_tiktoken_ranks

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


def launch_cfg(**common):
    """The config sections the launch code and the up-front checks read."""
    return OmegaConf.create({
        "common": dict({"hpu": True, "hpu_mode": "auto", "bf16": False, "memory_efficient_bf16": False,
                        "amp": False}, **common),
        "distributed_training": {"distributed_init_method": None, "distributed_world_size": 1,
                                 "distributed_rank": 0, "device_id": 0, "distributed_no_spawn": False,
                                 "distributed_backend": "nccl"},
    })


MPI_ACROSS_HOSTS = {"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                    "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MASTER_PORT": "12345"}


# Stock Fairseq in a process where the plugin cannot be imported, whatever a checkpoint's user_dir says.
BLOCK_PLUGIN = """
import sys

class NoPlugin:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gpt2_hpu":
            raise ImportError("gpt2_hpu is blocked in this process")

sys.meta_path.insert(0, NoPlugin())
"""


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


def fairseq_train(args, env=None, timeout=300, entry="fairseq-train", cwd=None):
    """Runs Fairseq's training CLI: "fairseq-train", "python -m", or our "gpt2-hpu-train"."""
    if entry == "python -m":
        cmd = [sys.executable, "-m", "fairseq_cli.train", *args]
    else:
        cmd = [BIN / entry, *args]
    proc = run(cmd, env=env, timeout=timeout, cwd=cwd)
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


def topic_texts():
    from pydoc_data.topics import topics

    return [(name, topics[name]) for name in sorted(topics)]


def write_text_corpus(path, topic_names, repeat=1):
    """Concatenate pydoc topics (real English prose and code) into one text file."""
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8", newline="") as f:
        for _ in range(repeat):
            for name in topic_names:
                f.write(topics[name])
                f.write("\n\n")
    return path


def _merge_parts(token, rank, ranks):
    """Split `token` the way byte-level BPE builds it from lower-ranked tokens."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
    return parts


def write_encoder_json_and_vocab_bpe(folder, tiktoken_path=PACKAGED_VOCAB):
    """Build Fairseq's `encoder.json`/`vocab.bpe` from a `.tiktoken` rank file."""
    ranks = load_tiktoken_ranks(tiktoken_path)
    b2u = bytes_to_unicode()

    def uni(bs):
        return "".join(b2u[b] for b in bs)

    encoder = {uni(token): rank for token, rank in ranks.items()}
    encoder["<|endoftext|>"] = len(ranks)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if rank < 256:
            if len(token) != 1:
                raise ValueError("ranks below 256 must be the single bytes")
            continue
        a, b = _merge_parts(token, rank, ranks)
        merges.append(f"{uni(a)} {uni(b)}")
    os.makedirs(folder, exist_ok=True)
    ej, vb = os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")
    with open(ej, "w", encoding="utf-8") as f:
        json.dump(encoder, f)
    with open(vb, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return ej, vb


def repo_env(**extra):
    """This environment with the checkout first on the import path (its gpt2_hpu wins over any other)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_prepare(*args, env=None):
    """Run `python -m gpt2_hpu.data ARGS` in a subprocess; return the CompletedProcess."""
    return run([sys.executable, "-m", "gpt2_hpu.data", "--quiet", *args], env=repo_env(**(env or {})), cwd=REPO)


def bpe_encoder_script():
    """Fairseq's GPT-2 BPE encoder, examples/roberta/multiprocessing_bpe_encoder.py: inside the package in a wheel
    install (setup.py links examples/ into it only when building a wheel), beside it in a source install."""
    package = os.path.dirname(importlib.util.find_spec("fairseq").origin)
    places = [os.path.join(package, "examples"), os.path.join(os.path.dirname(package), "examples")]
    for examples in places:
        script = os.path.join(examples, "roberta", "multiprocessing_bpe_encoder.py")
        if os.path.isfile(script):
            return script
    raise AssertionError(f"Fairseq's examples/roberta/multiprocessing_bpe_encoder.py is in none of {places}")


def run_in_repo(cmd):
    return run(cmd, env=repo_env(LOGLEVEL=os.environ.get("LOGLEVEL", "WARNING")), cwd=REPO)


def stock_encode(encoder_json, vocab_bpe, src, dst, workers=2):
    r = run_in_repo([
        sys.executable, bpe_encoder_script(),
        "--encoder-json", str(encoder_json), "--vocab-bpe", str(vocab_bpe),
        "--inputs", str(src), "--outputs", str(dst), "--keep-empty", "--workers", str(workers),
    ])
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


def stock_preprocess(destdir, trainpref=None, validpref=None, srcdict=None, workers=2):
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--only-source", "--destdir", str(destdir),
           "--workers", str(workers)]
    if trainpref:
        cmd += ["--trainpref", str(trainpref)]
    if validpref:
        cmd += ["--validpref", str(validpref)]
    if srcdict:
        cmd += ["--srcdict", str(srcdict)]
    r = run_in_repo(cmd)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return destdir


def load_fairseq_sequences(prefix, dict_path):
    """Token sequences as Fairseq itself loads them (`data_utils.load_indexed_dataset`)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(dict_path))
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary, dataset_impl=None)
    assert dataset is not None, f"fairseq could not load {prefix}"
    return [dataset[i].tolist() for i in range(len(dataset))]

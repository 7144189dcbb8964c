"""Helpers for the data-preparation tests: real offline text, stock-pipeline files and runners."""

import json
import os
import subprocess
import sys

from gpt2_hpu.data.bpe import bytes_to_unicode, load_tiktoken_ranks, PACKAGED_VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """Split ``token`` the way byte-level BPE builds it from lower-ranked tokens."""
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
    """Build Fairseq's ``encoder.json``/``vocab.bpe`` from a ``.tiktoken`` rank file."""
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


def run(cmd, **kwargs):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("LOGLEVEL", "WARNING")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=kwargs.pop("cwd", REPO), **kwargs)


def run_prepare(*args, env=None):
    """Run ``python -m gpt2_hpu.data ARGS`` in a subprocess; return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gpt2_hpu.data", "--quiet", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=REPO,
    )


def bpe_encoder_script():
    """Fairseq's GPT-2 BPE encoder, examples/roberta/multiprocessing_bpe_encoder.py: inside the package in a wheel
    install (setup.py links examples/ into it only when building a wheel), beside it in a source install."""
    import importlib.util

    package = os.path.dirname(importlib.util.find_spec("fairseq").origin)
    places = [os.path.join(package, "examples"), os.path.join(os.path.dirname(package), "examples")]
    for examples in places:
        script = os.path.join(examples, "roberta", "multiprocessing_bpe_encoder.py")
        if os.path.isfile(script):
            return script
    raise AssertionError(f"Fairseq's examples/roberta/multiprocessing_bpe_encoder.py is in none of {places}")


def stock_encode(encoder_json, vocab_bpe, src, dst, workers=2):
    r = run([
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
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return destdir


def load_fairseq_sequences(prefix, dict_path):
    """Token sequences as Fairseq itself loads them (``data_utils.load_indexed_dataset``)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(dict_path))
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary, dataset_impl=None)
    assert dataset is not None, f"fairseq could not load {prefix}"
    return [dataset[i].tolist() for i in range(len(dataset))]

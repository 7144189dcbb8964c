"""gpt2-hpu-prepare gives exactly what the stock Fairseq pipeline gives.

Stock: `multiprocessing_bpe_encoder.py --keep-empty` (Fairseq's own GPT-2 BPE,
with encoder.json/vocab.bpe rebuilt from the .tiktoken ranks) then
`fairseq-preprocess --only-source`. Both run here as subprocesses, offline.
"""

import os

import pytest

from helpers import (
    load_fairseq_sequences,
    run_prepare,
    stock_encode,
    stock_preprocess,
    topic_texts,
    write_encoder_json_and_vocab_bpe,
    write_text_corpus,
)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """Corpus files, the stock BPE files, and the stock pipeline's outputs."""
    root = tmp_path_factory.mktemp("stock")
    names = [name for name, _ in topic_texts()]
    train = write_text_corpus(root / "train.txt", names[::2][:30])  # ~150 KB of real text
    valid = write_text_corpus(root / "valid.txt", names[1::2][:8])
    with open(train, "a", encoding="utf-8", newline="") as f:  # edge cases the encoder must agree on
        f.write("  padded line \t\n\r\nold mac line\rnext\u00a0nbsp \u2028 sep\n<|endoftext|> as text\n\n\n'll 've\n")
    ej, vb = write_encoder_json_and_vocab_bpe(root / "bpe")
    stock_encode(ej, vb, train, root / "train.bpe")
    stock_encode(ej, vb, valid, root / "valid.bpe")
    stock_preprocess(root / "stock", trainpref=root / "train.bpe", validpref=root / "valid.bpe")
    return {"root": root, "train": train, "valid": valid, "ej": ej, "vb": vb, "out": root / "stock"}


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _assert_same_dataset(ours, theirs, splits):
    assert _bytes(ours / "dict.txt") == _bytes(theirs / "dict.txt")
    for split in splits:
        a = load_fairseq_sequences(ours / split, ours / "dict.txt")
        b = load_fairseq_sequences(theirs / split, theirs / "dict.txt")
        assert len(a) == len(b) and a == b, split
        # the files are even byte-identical
        assert _bytes(ours / f"{split}.bin") == _bytes(theirs / f"{split}.bin")
        assert _bytes(ours / f"{split}.idx") == _bytes(theirs / f"{split}.idx")


def test_tiktoken_ids_equal_fairseq_gpt2_bpe(stock):
    """The rebuilt encoder.json/vocab.bpe round trip: Fairseq's BPE == tiktoken, line by line."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    from gpt2_hpu.data.bpe import VocabSource

    fairseq_bpe = get_encoder(str(stock["ej"]), str(stock["vb"]))
    enc = VocabSource.parse().build()
    with open(stock["train"], encoding="utf-8") as f:
        lines = [line.strip() for line in f][:1500]
    for line in lines:
        assert fairseq_bpe.encode(line) == enc.encode_ordinary(line), line


@pytest.mark.parametrize("workers", [1, 2])
def test_presplit_matches_fairseq_preprocess(stock, tmp_path, workers):
    out = tmp_path / "ours"
    r = run_prepare("--trainpref", stock["train"], "--validpref", stock["valid"], "--only-source",
                    "--destdir", out, "--workers", workers, "--chunk-mb", "0.02")
    assert r.returncode == 0, r.stderr
    _assert_same_dataset(out, stock["out"], ["train", "valid"])


def test_srcdict_matches_fairseq_preprocess(stock, tmp_path):
    """--srcdict: a dictionary from other text, so some ids map to <unk> in both pipelines."""
    small = tmp_path / "small.txt"
    write_text_corpus(small, ["assert", "if"])
    stock_encode(stock["ej"], stock["vb"], small, tmp_path / "small.bpe")
    stock_preprocess(tmp_path / "dictsrc", trainpref=tmp_path / "small.bpe")
    srcdict = tmp_path / "dictsrc" / "dict.txt"
    theirs = stock_preprocess(tmp_path / "stock", trainpref=stock["root"] / "train.bpe",
                              validpref=stock["root"] / "valid.bpe", srcdict=srcdict)
    ours = tmp_path / "ours"
    r = run_prepare("--trainpref", stock["train"], "--validpref", stock["valid"], "--srcdict", srcdict,
                    "--destdir", ours)
    assert r.returncode == 0, r.stderr
    assert "<unk>" in r.stdout  # the summary reports the unknown tokens
    _assert_same_dataset(ours, theirs, ["train", "valid"])


def test_encoder_json_vocab_gives_same_output(stock, tmp_path):
    out = tmp_path / "ours"
    r = run_prepare("--trainpref", stock["train"], "--encoder-json", stock["ej"], "--vocab-bpe", stock["vb"],
                    "--destdir", out)
    assert r.returncode == 0, r.stderr
    assert _bytes(out / "dict.txt") == _bytes(stock["out"] / "dict.txt")
    assert _bytes(out / "train.bin") == _bytes(stock["out"] / "train.bin")


def test_raw_mode_equals_stock_on_concatenated_split(tmp_path):
    """Raw mode == stock pipeline on each split's documents concatenated, one blank line after each."""
    from gpt2_hpu.data.bpe import VocabSource
    from gpt2_hpu.data.encode import LineEncoder
    from gpt2_hpu.data.sources import split_of, text_lines

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in topic_texts()[:40]:
        (docs / f"{name}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    r = run_prepare("--input", docs, "--destdir", out, "--split", "80,20,0", "--seed", "3")
    assert r.returncode == 0, r.stderr
    # the reference: concatenate per split in sorted order and run the pre-split path (proven equal above)
    files = {"train": [], "valid": []}
    for path in sorted(os.listdir(docs)):
        split = ["train", "valid"][split_of(3, path, [0.8, 1.0])]
        files[split].append(path)
    for split, names in files.items():
        with open(tmp_path / f"{split}.txt", "w", encoding="utf-8", newline="") as f:
            for name in names:
                for line in text_lines((docs / name).read_text(encoding="utf-8")):
                    f.write(line + "\n")
                f.write("\n")
    ref = tmp_path / "ref"
    r = run_prepare("--trainpref", tmp_path / "train.txt", "--validpref", tmp_path / "valid.txt", "--destdir", ref)
    assert r.returncode == 0, r.stderr
    for name in ("dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx"):
        assert _bytes(out / name) == _bytes(ref / name), name
    assert LineEncoder(VocabSource.parse().build()).n_vocab == 50257

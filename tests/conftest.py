"""Fixtures: a tiny real-text Fairseq dataset; and one OpenMP thread for every process the tests start (the
helpers the tests share are in helpers.py)."""
import os

import pytest

# Two test workers (pyproject.toml) each run training processes, often several ranks at once. With torch's
# default of one OpenMP thread per core, those threads outnumber the cores and spin waiting for each other: a
# 40-update run took 69 s instead of 14. The children inherit this setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Fairseq and torch are imported in the fixtures only: collecting the fast layer (tests/unit) must not load them.
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
    from pydoc_data.topics import topics

    from fairseq.data import Dictionary

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

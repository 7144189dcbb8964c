"""The data stages in-process: dictionary, line encoder, index writer, input formats, split parsing."""
import numpy as np
import pytest

from gpt2_hpu.data import sources
from gpt2_hpu.data.bpe import VocabSource
from gpt2_hpu.data.dictionary import TokenDictionary
from gpt2_hpu.data.encode import LineEncoder
from gpt2_hpu.data.indexed import best_fitting_dtype, write_index
from gpt2_hpu.data.plan import parse_split
from gpt2_hpu.errors import PrepareError


@pytest.fixture(scope="module")
def encoder():
    return LineEncoder(VocabSource.parse().build())


@pytest.mark.parametrize("threshold,nwords,padding", [(0, -1, 8), (2, -1, 8), (0, 10, 8), (0, -1, 1)])
def test_dictionary_equals_fairseqs(tmp_path, threshold, nwords, padding):
    from fairseq.data import Dictionary

    counts = np.zeros(200, dtype=np.int64)
    rng = np.random.default_rng(0)
    for token, count in zip(rng.integers(0, 200, 60), rng.integers(1, 5, 60)):
        counts[token] += count
    ours = TokenDictionary.from_counts(counts, threshold, nwords, padding)
    theirs = Dictionary()
    for token in np.flatnonzero(counts):
        theirs.add_symbol(str(token), n=int(counts[token]))
    theirs.finalize(threshold=threshold, nwords=nwords, padding_factor=padding)
    theirs.save(str(tmp_path / "dict.txt"))
    assert ours.save_text() == (tmp_path / "dict.txt").read_bytes()
    assert ours.symbols == theirs.symbols
    loaded = TokenDictionary.load(str(tmp_path / "dict.txt"))
    assert loaded.symbols == ours.symbols and loaded.counts[4:] == ours.counts[4:]


def test_dictionary_load_errors_are_one_line(tmp_path):
    bad = tmp_path / "dict.txt"
    bad.write_text("17 3\n17 2\n")
    with pytest.raises(PrepareError, match=r"dict.txt:2: duplicate symbol '17'"):
        TokenDictionary.load(str(bad))
    with pytest.raises(PrepareError, match="not found; check --srcdict"):
        TokenDictionary.load(str(tmp_path / "missing.txt"))


def test_lookup_table_maps_unknown_ids_to_unk_and_the_marker_to_eos():
    counts = np.zeros(10, dtype=np.int64)
    counts[[4, 7]] = [5, 9]
    table = TokenDictionary.from_counts(counts).lookup_table(10, 65535)
    assert table[7] == 4 and table[4] == 5  # by count, after the four specials
    assert table[0] == 3 and table[65535] == 2


LINES = ["Hello world", "", "  indented line  ", "naïve café — “quotes”", "\t", "x" * 300, "a\u00a0b", "end"]


def test_encoder_equals_encoding_each_stripped_line_on_its_own(encoder):
    raw, sizes = encoder.encode_lines(LINES)
    expected = []
    for line in LINES:
        expected.append(encoder.encoding.encode_ordinary(line.strip()) + [encoder.eos_marker])
    assert sizes.tolist() == [len(e) for e in expected]
    assert raw.tolist() == [i for e in expected for i in e]


def test_encoder_falls_back_to_line_by_line_when_the_boundaries_do_not_survive(encoder):
    class MergingEncoder(LineEncoder):
        """Encodes a batch as if a boundary had merged with its neighbours (the fast path's one risk)."""

        def _encode(self, text):
            ids = super()._encode(text)
            return ids[ids != self.newline] if "\n" in text else ids

    merging = MergingEncoder(encoder.encoding)
    raw, sizes = merging.encode_lines(LINES)
    assert (raw.tolist(), sizes.tolist()) == tuple(a.tolist() for a in encoder.encode_lines(LINES))


def test_index_writer_is_read_back_by_fairseq(tmp_path):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    sequences = [[5, 6, 2], [2], [7, 8, 9, 10, 2]]
    dtype = best_fitting_dtype(50000)
    (tmp_path / "x.bin").write_bytes(np.concatenate([np.array(s, dtype=dtype) for s in sequences]).tobytes())
    np.array([len(s) for s in sequences], dtype=np.int32).tofile(str(tmp_path / "sizes"))
    write_index(str(tmp_path / "x.idx"), dtype, str(tmp_path / "sizes"))
    dataset = MMapIndexedDataset(str(tmp_path / "x"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == sequences
    assert dataset.sizes.tolist() == [3, 1, 5]


@pytest.mark.parametrize("name,reader,in_folder", [
    ("openwebtext.tar.xz", "_archive_documents", None),
    ("corpus.tgz", "_archive_documents", None),
    ("urlsf_subset00-1_data.xz", "_shard_file_documents", "_shard_file_documents"),
    ("records.jsonl.gz", "_jsonl_documents", "_jsonl_documents"),
    ("records.json", "_jsonl_documents", "_jsonl_documents"),
    ("doc.txt", "_text_documents", "_text_documents"),
    ("notes.md", None, None),
])
def test_input_format_table(name, reader, in_folder):
    def named(found):
        return found.__name__ if found is not None else None

    assert named(sources._reader(name)) == reader
    # Inside a folder an archive is not unpacked: a .tar.xz there reads as one shard, other archives are skipped.
    expected_in_folder = "_shard_file_documents" if name.endswith(".tar.xz") else in_folder
    assert named(sources._reader(name, in_folder=True)) == expected_in_folder


def test_unknown_input_format_is_refused(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(PrepareError, match=r"unknown format \(expected .tar.xz archive, .xz shard, .jsonl, .txt"):
        sources.RawCorpus([str(tmp_path / "notes.md")])


def test_split_percentages():
    assert parse_split("90,5,5") == pytest.approx([0.9, 0.05, 0.05])
    assert parse_split("1,1,0") == pytest.approx([0.5, 0.5, 0])
    for bad in ("0,5,5", "90,5", "a,b,c", "90,-5,15"):
        with pytest.raises(PrepareError, match="--split expects three percentages"):
            parse_split(bad)

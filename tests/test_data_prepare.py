"""gpt2-hpu-prepare: raw corpus formats, split determinism, bad input, safety and resume."""

import io
import json
import os
import tarfile

import pytest

from helpers import load_fairseq_sequences, run_prepare, topic_texts, write_text_corpus

OUTPUTS = ("dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx", "test.bin", "test.idx")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _same_outputs(a, b, names=OUTPUTS):
    for name in names:
        assert _read(a / name) == _read(b / name), name


def _assert_one_line_error(r, code):
    assert r.returncode == code, (r.returncode, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpt2-hpu-prepare: error: "), r.stderr
    assert "Traceback" not in r.stderr


def _shard_bytes(docs):
    """An OpenWebText-style shard: an xz-compressed tar of .txt documents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in docs:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def owt(tmp_path_factory):
    """A miniature openwebtext.tar.xz (4 good shards, 1 corrupt) and the same shards in a folder."""
    root = tmp_path_factory.mktemp("owt")
    topics = topic_texts()[:48]
    shards = {}
    for s in range(4):
        docs = [(f"{s:04d}-{i}.txt", text.encode("utf-8")) for i, (_, text) in enumerate(topics[s::4])]
        if s == 1:
            docs.append(("bad-utf8.txt", b"caf\xe9 au lait\nsecond line\n"))
            docs.append(("empty.txt", b"  \n\n"))
        shards[f"urlsf_subset00-{s}_data.xz"] = _shard_bytes(docs)
    good = _shard_bytes([("lost.txt", b"this shard is cut short " * 2000)])
    shards["urlsf_subset00-9_data.xz"] = good[: len(good) // 2]
    folder = root / "openwebtext"
    folder.mkdir()
    for name, data in shards.items():
        (folder / name).write_bytes(data)
    archive = root / "openwebtext.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="openwebtext")
    return {"archive": archive, "folder": folder, "root": root}


def test_demo_corpus_in_process_and_loadable_by_fairseq(tmp_path, capsys):
    from gpt2_hpu.data.prepare import prepare

    out = tmp_path / "demo"
    assert prepare(["--demo-corpus", "--destdir", str(out), "--quiet"]) == 0
    manifest = json.loads(_read(out / "prepare.json"))
    assert manifest["documents"]["valid"] >= 3 and manifest["documents"]["train"] >= 60
    train = load_fairseq_sequences(out / "train", out / "dict.txt")
    valid = load_fairseq_sequences(out / "valid", out / "dict.txt")
    assert len(train) == manifest["sequences"]["train"]["sequences"] and len(valid) > 10
    assert all(seq[-1] == 2 for seq in train[:100])  # every sequence ends with </s>
    assert not os.path.exists(out / ".gpt2-hpu-prepare.tmp")
    capsys.readouterr()
    assert prepare(["--demo-corpus", "--destdir", str(out), "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_openwebtext_archive_equals_shard_folder_and_reports_bad_input(owt, tmp_path):
    a, b = tmp_path / "from_archive", tmp_path / "from_folder"
    r = run_prepare("--input", owt["archive"], "--destdir", a, "--split", "70,15,15")
    assert r.returncode == 0, r.stderr
    assert "skipping corrupt shard urlsf_subset00-9_data.xz" in r.stderr
    assert "1 empty documents, 1 corrupt shards" in r.stdout
    assert "invalid UTF-8 (bytes replaced by U+FFFD): 1 " in r.stdout
    r = run_prepare("--input", owt["folder"], "--destdir", b, "--split", "70,15,15")
    assert r.returncode == 0, r.stderr
    _same_outputs(a, b)
    manifest = json.loads(_read(a / "prepare.json"))
    assert sum(manifest["documents"].values()) == 48 + 1  # the empty document is not counted in a split
    assert manifest["stats"]["corrupt_shards"] == 1


def test_split_does_not_depend_on_workers_or_chunking(tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for name, text in topic_texts()[:60]:
            f.write(json.dumps({"id": name, "text": text}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"title": "no text field"}) + "\n")
    runs = []
    for workers, chunk in ((1, "1"), (2, "0.01"), (2, "4")):
        out = tmp_path / f"w{workers}-{chunk}"
        r = run_prepare("--input", jsonl, "--destdir", out, "--workers", workers, "--chunk-mb", chunk, "--seed", "7")
        assert r.returncode == 0, r.stderr
        assert "2 bad JSONL records" in r.stdout
        runs.append(out)
    _same_outputs(runs[0], runs[1])
    _same_outputs(runs[0], runs[2])
    other_seed = tmp_path / "seed8"
    assert run_prepare("--input", jsonl, "--destdir", other_seed, "--seed", "8").returncode == 0
    assert _read(other_seed / "valid.idx") != _read(runs[0] / "valid.idx")


def test_presplit_keeps_empty_lines_and_replaces_bad_utf8(tmp_path):
    train = tmp_path / "train.txt"
    train.write_bytes(b"hello world\n\n   \ncaf\xe9\nlast line without newline")
    out = tmp_path / "out"
    r = run_prepare("--trainpref", train, "--destdir", out)
    assert r.returncode == 0, r.stderr
    assert "invalid UTF-8 (bytes replaced by U+FFFD): 1 " in r.stdout
    seqs = load_fairseq_sequences(out / "train", out / "dict.txt")
    assert len(seqs) == 5 and seqs[1] == [2] and seqs[2] == [2]


def test_missing_vocabulary_and_inputs_are_one_line_errors(tmp_path):
    train = write_text_corpus(tmp_path / "t.txt", ["if"])
    _assert_one_line_error(
        run_prepare("--trainpref", train, "--destdir", tmp_path / "o", "--vocab", tmp_path / "nope.tiktoken"), 1)
    _assert_one_line_error(run_prepare("--trainpref", train, "--destdir", tmp_path / "o",
                                       "--encoder-json", tmp_path / "e.json", "--vocab-bpe", tmp_path / "v.bpe"), 1)
    _assert_one_line_error(run_prepare("--trainpref", tmp_path / "missing.txt", "--destdir", tmp_path / "o"), 1)
    _assert_one_line_error(run_prepare("--input", tmp_path / "missing.tar.xz", "--destdir", tmp_path / "o"), 1)
    _assert_one_line_error(
        run_prepare("--trainpref", train, "--srcdict", tmp_path / "dict.txt", "--destdir", tmp_path / "o"), 1)
    bad_vocab = tmp_path / "bad.tiktoken"
    bad_vocab.write_text("this is not a rank file\n")
    _assert_one_line_error(run_prepare("--trainpref", train, "--destdir", tmp_path / "o", "--vocab", bad_vocab), 1)
    assert not os.path.exists(tmp_path / "o" / "dict.txt")


def test_corrupt_outer_archive_fails_without_output(owt, tmp_path):
    broken = tmp_path / "openwebtext.tar.xz"
    data = _read(owt["archive"])
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _assert_one_line_error(run_prepare("--input", broken, "--destdir", out), 1)
    assert not any(os.path.exists(out / name) for name in OUTPUTS + ("prepare.json",))


def test_refuses_a_different_existing_dataset_unless_forced(tmp_path):
    train = write_text_corpus(tmp_path / "t.txt", ["if", "while"])
    other = write_text_corpus(tmp_path / "u.txt", ["for"])
    out = tmp_path / "out"
    assert run_prepare("--trainpref", train, "--destdir", out).returncode == 0
    before = _read(out / "train.bin")
    _assert_one_line_error(run_prepare("--trainpref", other, "--destdir", out), 2)
    assert _read(out / "train.bin") == before
    r = run_prepare("--trainpref", other, "--destdir", out, "--force")
    assert r.returncode == 0, r.stderr
    assert _read(out / "train.bin") != before
    # a dataset not made by this command (e.g. by fairseq-preprocess) is also refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dict.txt").write_text("13 5\n")
    _assert_one_line_error(run_prepare("--trainpref", train, "--destdir", foreign), 2)
    assert (foreign / "dict.txt").read_text() == "13 5\n"


@pytest.mark.parametrize("mode", ["raw", "pre-split"])
def test_interrupted_run_resumes_to_identical_output(tmp_path, mode):
    if mode == "raw":
        docs = tmp_path / "docs"
        docs.mkdir()
        for name, text in topic_texts()[:40]:
            (docs / f"{name}.txt").write_text(text, encoding="utf-8")
        inputs = ["--input", docs]
    else:
        names = [n for n, _ in topic_texts()]
        train = write_text_corpus(tmp_path / "train.txt", names[:30])
        valid = write_text_corpus(tmp_path / "valid.txt", names[30:40])
        inputs = ["--trainpref", train, "--validpref", valid]
    common = [*inputs, "--chunk-mb", "0.01", "--checkpoint-seconds", "0"]
    ref = tmp_path / "ref"
    assert run_prepare(*common, "--destdir", ref).returncode == 0
    out = tmp_path / "out"
    killed = run_prepare(*common, "--destdir", out, env={"GPT2_HPU_PREPARE_EXIT_AFTER_CHECKPOINTS": "3"})
    assert killed.returncode == 75
    # nothing that looks like a finished dataset
    assert not os.path.exists(out / "prepare.json") and not os.path.exists(out / "dict.txt")
    # a later chunk was half written after the last checkpoint: resume must cut it off
    work = out / ".gpt2-hpu-prepare.tmp"
    with open(work / "train.raw", "ab") as f:
        f.write(b"\x01\x02\x03")
    r = run_prepare(*common, "--destdir", out, "--workers", "1")
    assert r.returncode == 0, r.stderr
    names = ["dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx"]
    _same_outputs(out, ref, names)
    assert not os.path.exists(work)


def test_prepare_starts_without_torch_or_fairseq():
    import subprocess
    import sys

    from helpers import REPO

    code = (
        "import sys, runpy\n"
        "sys.argv = ['gpt2-hpu-prepare', '--help']\n"
        "try:\n"
        "    runpy.run_module('gpt2_hpu.data', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "from gpt2_hpu.data import bpe, dictionary, encode, indexed, prepare, progress, sources, spool\n"
        "assert 'torch' not in sys.modules and 'fairseq' not in sys.modules, 'heavy import'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "--trainpref" in r.stdout and "--demo-corpus" in r.stdout

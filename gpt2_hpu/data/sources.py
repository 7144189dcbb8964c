"""Reading raw corpora as documents, and the deterministic train/valid/test split.

Accepted inputs (`--input`, several allowed, read in the order given):

* `openwebtext.tar.xz` (or any `.tar`/`.tar.gz`/`.tar.xz`): the original
  OpenWebText archive of `urlsf_subset*.xz` shards, read as a stream (nothing
  is extracted to disk); `.txt` members directly inside it are documents too;
* a folder: `*.xz` shards (each an xz-compressed tar of `.txt` documents),
  `*.txt` documents and `*.jsonl` files, in sorted path order, recursively;
* a single `urlsf_subset*.xz` shard;
* a JSONL file (`.jsonl`, `.jsonl.gz`, `.jsonl.xz`): one document per
  record, taken from its `"text"` field;
* `pydoc:topics`: the demo corpus (see `gpt2_hpu.data.demo_corpus`).

A document is one `.txt` file or one JSONL record. Its *key* names it
independently of where the corpus lives (shard name + member name, relative
path, or JSONL file name + record number), and the split of a document is a
pure function of `(seed, key)`: it does not depend on workers or order.

Bad input never stops the run: a corrupt `.xz` shard is skipped as a whole
(its documents are buffered until the shard has been read to the end, so no
half shard gets in) and counted; bytes that are not UTF-8 are replaced by U+FFFD
and the document is counted; blank documents and JSONL records that are not
JSON objects with a string `"text"` are skipped and counted.
"""

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import tarfile
import zlib

from gpt2_hpu.data.common import warn
from gpt2_hpu.data.demo_corpus import demo_documents, demo_fingerprint
from gpt2_hpu.errors import PrepareError

DEMO_SPEC = "pydoc:topics"
_NEWLINES = re.compile(r"\r\n|\r|\n")
_SHARD_ERRORS = (tarfile.TarError, lzma.LZMAError, EOFError, OSError, zlib.error, ValueError)


class SourceStats:
    """Counters reported in the final summary."""

    FIELDS = ("documents", "empty_documents", "non_utf8_documents", "corrupt_shards", "bad_records")

    def __init__(self, **values):
        for name in self.FIELDS:
            setattr(self, name, int(values.get(name, 0)))
        self._baseline = {name: 0 for name in self.FIELDS}

    def to_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def mark(self):
        """Counts so far are not reported (used after skipping already-encoded input)."""
        self._baseline = self.to_dict()

    def take_delta(self):
        """Counts since the previous call (or mark), to attach to one batch of work."""
        now = self.to_dict()
        delta = {k: now[k] - self._baseline[k] for k in self.FIELDS}
        self._baseline = now
        return delta


def text_lines(text):
    """Split like Python's universal-newline file iteration (`\\n`, `\\r`, `\\r\\n` only)."""
    lines = _NEWLINES.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def decode(data, stats):
    """UTF-8 decode; invalid bytes become U+FFFD and the document is counted."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.non_utf8_documents += 1
        return data.decode("utf-8", errors="replace")


def split_of(seed, key, cumulative):
    """Index of the split a document belongs to (`cumulative`: e.g. [0.95, 0.975, 1.0])."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    for i, edge in enumerate(cumulative):
        if u < edge:
            return i
    return len(cumulative) - 1


def _shard_documents(fileobj, shard_name, stats):
    """All `(key, bytes)` documents of one xz tar shard, or None when it is corrupt."""
    docs = []
    try:
        with tarfile.open(fileobj=fileobj, mode="r|xz") as tar:
            for member in tar:
                if member.isfile():
                    docs.append((f"{shard_name}/{member.name}", tar.extractfile(member).read()))
    except _SHARD_ERRORS as e:
        stats.corrupt_shards += 1
        warn(f"skipping corrupt shard {shard_name} ({type(e).__name__}: {e})")
        return None
    return docs


def _open_maybe_compressed(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _jsonl_documents(path, name, stats):
    name = os.path.basename(name)
    try:
        with _open_maybe_compressed(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(decode(raw, stats))
                    text = record["text"]
                    if not isinstance(text, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    stats.bad_records += 1
                    continue
                yield f"{name}:{lineno}", text
    except _SHARD_ERRORS as e:
        raise PrepareError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _archive_documents(path, name, stats):
    try:
        with tarfile.open(path, mode="r|*") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if base.endswith(".xz"):
                    # read the whole (small) shard first: a truncated archive fails here, as the archive
                    docs = _shard_documents(io.BytesIO(outer.extractfile(member).read()), base, stats)
                    for key, data in docs or ():
                        yield key, data
                elif base.endswith(".txt"):
                    yield member.name, outer.extractfile(member).read()
    except _SHARD_ERRORS as e:
        raise PrepareError(
            f"archive {path} is corrupt or truncated ({type(e).__name__}: {e}); download it again"
        ) from None


def _shard_file_documents(path, name, stats):
    with open(path, "rb") as f:
        docs = _shard_documents(f, os.path.basename(name), stats)
    yield from docs or ()


def _text_documents(path, name, stats):
    with open(path, "rb") as f:
        yield name, f.read()


# The input formats, tried in order (an archive's name also ends in .xz): the pattern its file name matches,
# its reader, and whether it is read inside a folder too. A reader takes (path, name, stats), where name is
# the file's base name, or its path relative to the folder given, and yields (key, text or bytes).
_FORMATS = (
    (re.compile(r"\.(tar|tar\.xz|txz|tar\.gz|tgz|tar\.bz2)$"), _archive_documents, False),
    (re.compile(r"\.jsonl?(\.(gz|xz|bz2))?$"), _jsonl_documents, True),
    (re.compile(r"\.xz$"), _shard_file_documents, True),
    (re.compile(r"\.txt$"), _text_documents, True),
)
FORMATS_HELP = ".tar.xz archive, .xz shard, .jsonl, .txt or a folder"


def _reader(path, in_folder=False):
    """The reader for the file at `path`, or None when its format is not one of _FORMATS."""
    for pattern, reader, in_folders in _FORMATS:
        if pattern.search(path) and (in_folders or not in_folder):
            return reader
    return None


def _walk(spec):
    """The files of `spec` in sorted path order (hidden ones left out), or `[spec]` for a file."""
    if not os.path.isdir(spec):
        return [spec]
    out = []
    for root, dirs, names in os.walk(spec):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    return sorted(out)


def _folder_documents(path, stats):
    for file in _walk(path):
        reader = _reader(file, in_folder=True)
        if reader is not None:
            yield from reader(file, os.path.relpath(file, path).replace(os.sep, "/"), stats)


class RawCorpus:
    """One or more raw corpus inputs, read as a single ordered stream of documents."""

    def __init__(self, specs):
        self.specs = list(specs)
        for spec in self.specs:
            if spec == DEMO_SPEC:
                continue
            if not os.path.exists(spec):
                raise PrepareError(f"input {spec} not found")
            if os.path.isfile(spec) and _reader(spec) is None:
                raise PrepareError(f"input {spec}: unknown format (expected {FORMATS_HELP})")

    def fingerprint(self):
        """Identity of the inputs: names, sizes and modification times (not content hashes)."""
        out = []
        for spec in self.specs:
            if spec == DEMO_SPEC:
                out.append({"input": spec, "content": demo_fingerprint()})
                continue
            h = hashlib.sha256()
            for file in _walk(spec):
                st = os.stat(file)
                entry = f"{os.path.relpath(file, spec)}\x00{st.st_size}\x00{st.st_mtime_ns}\n"
                h.update(entry.encode("utf-8", "surrogateescape"))
            out.append({"input": os.path.abspath(spec), "files": h.hexdigest()})
        return out

    def _raw_documents(self, stats):
        for spec in self.specs:
            if spec == DEMO_SPEC:
                yield from demo_documents()
            elif os.path.isdir(spec):
                yield from _folder_documents(spec, stats)
            else:
                yield from _reader(spec)(spec, os.path.basename(spec), stats)

    def documents(self, stats, skip=0):
        """Yield `(ordinal, key, text)`; `text` is None for a skipped (blank) document.

        `ordinal` counts every document read, so a resumed run can `skip` the
        ones already encoded (they are still read, but not decoded or encoded).
        """
        for ordinal, (key, data) in enumerate(self._raw_documents(stats)):
            if ordinal < skip:
                if ordinal == skip - 1:
                    stats.mark()
                continue
            stats.documents += 1
            text = decode(data, stats) if isinstance(data, bytes) else data
            if not text.strip():
                stats.empty_documents += 1
                text = None
            yield ordinal, key, text


def read_text_chunks(path, chunk_bytes, stats, start=0):
    """Yield `(end_offset, lines)` of a text file in newline-aligned chunks from `start`.

    Lines are split like the stock encoder's `open(..., encoding="utf-8")`
    iteration; invalid UTF-8 is replaced (U+FFFD) and counted per line in
    `stats.non_utf8_documents`.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PrepareError(f"cannot read {path}: {e.strerror}") from None
    with f:
        f.seek(start)
        while True:
            data = f.read(chunk_bytes)
            if not data:
                break
            if not data.endswith(b"\n"):
                data += f.readline()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                for line in data.split(b"\n"):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        stats.non_utf8_documents += 1
                text = data.decode("utf-8", errors="replace")
            yield f.tell(), text_lines(text)


def file_fingerprint(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


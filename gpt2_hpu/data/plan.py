"""Stage 1, plan: the command line becomes streams of work, the split names and the job's fingerprint.

A stream is one pass over one input. In raw-corpus mode one stream reads every document and sends each to
the split a seeded hash of its name picks; in pre-split mode each text file is a stream of its own split.
The fingerprint (`job`) names everything the output depends on; a run with another fingerprint never mixes
its work with this one's (destdir.py).
"""
import os

from gpt2_hpu.data.sources import DEMO_SPEC, RawCorpus, file_fingerprint, read_text_chunks, split_of, text_lines
from gpt2_hpu.errors import PrepareError

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "valid", "test")


class Stream:
    """One pass over one input, feeding one or more splits."""

    def __init__(self, name, splits, jobs):
        self.name = name
        self.splits = splits
        self.jobs = jobs  # callable(position, stats, chunk_bytes) -> iterator of (end, batch, docs)


def parse_split(text):
    """`TRAIN,VALID,TEST` percentages as fractions of one."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(x < 0 for x in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise PrepareError(f"--split expects three percentages TRAIN,VALID,TEST with TRAIN > 0, got {text!r}")
    total = sum(parts)
    return [x / total for x in parts]


def _raw_jobs(corpus, split_names, cumulative, seed):
    def jobs(position, stats, chunk_bytes):
        batch, docs, size, end = {}, {}, 0, position
        for ordinal, key, text in corpus.documents(stats, skip=position):
            end = ordinal + 1
            if text is not None:
                split = split_names[split_of(seed, key, cumulative)]
                lines = text_lines(text)
                lines.append("")  # an empty line (a lone </s>) closes every document
                batch.setdefault(split, []).extend(lines)
                docs[split] = docs.get(split, 0) + 1
                size += len(text)
            if size >= chunk_bytes:
                yield end, batch, docs
                batch, docs, size = {}, {}, 0
        if batch or end != position:
            yield end, batch, docs

    return jobs


def _file_jobs(path, split):
    def jobs(position, stats, chunk_bytes):
        for end, lines in read_text_chunks(path, chunk_bytes, stats, start=position):
            yield end, {split: lines}, {}

    return jobs


def _raw_streams(args, job):
    specs = list(args.input or []) + ([DEMO_SPEC] if args.demo_corpus else [])
    ratios = parse_split(args.split or ("90,5,5" if args.demo_corpus and not args.input else "95,2.5,2.5"))
    names = [n for n, r in zip(SPLIT_NAMES, ratios) if r > 0]
    kept = [r for r in ratios if r > 0]
    cumulative = [sum(kept[: i + 1]) for i in range(len(kept))]
    cumulative[-1] = 1.0
    corpus = RawCorpus(specs)
    job.update(mode="raw", inputs=corpus.fingerprint(), split=[round(r, 12) for r in ratios], seed=args.seed)
    if args.srcdict is None and "train" not in names:
        raise PrepareError("the train split is empty; give --split with TRAIN > 0")
    return [Stream("corpus", names, _raw_jobs(corpus, names, cumulative, args.seed))], names


def _presplit_streams(args, job):
    if not args.trainpref and not args.srcdict:
        raise PrepareError("--trainpref is required unless --srcdict is given")
    pairs = []
    if args.trainpref:
        pairs.append(("train", args.trainpref))
    for kind, prefs in (("valid", args.validpref), ("test", args.testpref)):
        for k, pref in enumerate(prefs.split(",") if prefs else []):
            pairs.append((kind + (str(k) if k else ""), pref))
    streams, inputs = [], {}
    for name, path in pairs:
        if not os.path.isfile(path):
            raise PrepareError(f"input {path} (for {name}) not found")
        streams.append(Stream(name, [name], _file_jobs(path, name)))
        inputs[name] = file_fingerprint(path)
    job.update(mode="pre-split", inputs=inputs)
    return streams, [n for n, _ in pairs]


def make_plan(args):
    """Return `(streams, split_names, job)` for the command line."""
    raw_mode = bool(args.input or args.demo_corpus)
    pre_mode = bool(args.trainpref or args.validpref or args.testpref)
    if raw_mode and pre_mode:
        raise PrepareError(
            "use either --input/--demo-corpus (raw corpus) or --trainpref/--validpref/--testpref, not both")
    if not raw_mode and not pre_mode:
        raise PrepareError("nothing to do: give --input PATH, --demo-corpus, or --trainpref FILE")
    job = {"format": FORMAT_VERSION}
    streams, names = (_raw_streams if raw_mode else _presplit_streams)(args, job)
    job.update(thresholdsrc=args.thresholdsrc, nwordssrc=args.nwordssrc, padding_factor=args.padding_factor)
    return streams, names, job

"""`gpt2-hpu-prepare`: text corpus -> Fairseq data directory (dict.txt + mmap .bin/.idx).

Two input modes:

* raw corpus (`--input` / `--demo-corpus`): OpenWebText archive or shards, folders of `.txt`, JSONL;
  documents are split train/valid/test by a seeded hash of their name (`--split`, `--seed`);
* pre-split (`--trainpref/--validpref/--testpref`): text files, exactly like
  `multiprocessing_bpe_encoder.py --keep-empty` + `fairseq-preprocess --only-source` (same dict.txt, same
  .bin/.idx bytes).

One module a stage: plan.py turns the command line into streams of work; sources.py reads the inputs;
encode.py (pass 1) encodes batches of lines with tiktoken on `--workers` threads and appends raw ids and line
lengths to spool files in `DESTDIR/.gpt2-hpu-prepare.tmp/`, checkpointing every `--checkpoint-seconds`;
binarize.py (pass 2) counts the ids of the train split, builds dict.txt and maps every split through it into
`.bin`/`.idx`; finalize.py renames the outputs into DESTDIR and writes `prepare.json` (the manifest) last;
destdir.py keeps runs with different settings from mixing. Memory is bounded by `--chunk-mb` x workers,
whatever the corpus size.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from gpt2_hpu.data.bpe import VocabSource
from gpt2_hpu.data.common import PROG, info, read_json, sha256_files, warn, write_json_atomic
from gpt2_hpu.data.destdir import MANIFEST, WORKDIR, check_destdir
from gpt2_hpu.data.dictionary import TokenDictionary
from gpt2_hpu.data.encode import LineEncoder, encode_stream
from gpt2_hpu.data.finalize import finalize, print_summary
from gpt2_hpu.data.plan import make_plan
from gpt2_hpu.errors import PrepareError

DEBUG_ENV = "GPT2_HPU_PREPARE_DEBUG"


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Encode a text corpus with GPT-2 BPE (tiktoken) into a Fairseq data directory "
        "(dict.txt + mmap train/valid/test .bin/.idx) for fairseq-train --task language_modeling.",
    )
    src = p.add_argument_group("raw corpus mode (documents are split by a seeded hash of their name)")
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help="openwebtext.tar.xz, a folder of urlsf_subset*.xz shards / .txt files / .jsonl files, "
                     "a .jsonl file with a 'text' field, or pydoc:topics")
    src.add_argument("--demo-corpus", action="store_true",
                     help="the embedded demo corpus (Python's reference manual topics), split 90/5/5")
    src.add_argument("--split", default=None, metavar="TRAIN,VALID,TEST",
                     help="split percentages (default 95,2.5,2.5; 90,5,5 with --demo-corpus)")
    src.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    pre = p.add_argument_group("pre-split mode (like fairseq-preprocess --only-source)")
    pre.add_argument("--trainpref", metavar="FILE", help="training text file (one line = one sequence)")
    pre.add_argument("--validpref", metavar="FILE[,FILE]", help="validation text file(s), comma separated")
    pre.add_argument("--testpref", metavar="FILE[,FILE]", help="test text file(s), comma separated")
    pre.add_argument("--only-source", action="store_true",
                     help="accepted for fairseq-preprocess compatibility; always on")
    voc = p.add_argument_group("vocabulary and dictionary")
    voc.add_argument("--vocab", metavar="FILE|tiktoken:gpt2",
                     help="GPT-2 BPE ranks as a .tiktoken file (default: the packaged gpt2.tiktoken), "
                     "or tiktoken:gpt2 to use tiktoken's own encoding (downloads it)")
    voc.add_argument("--encoder-json", metavar="FILE", help="Fairseq/OpenAI encoder.json (with --vocab-bpe)")
    voc.add_argument("--vocab-bpe", metavar="FILE", help="Fairseq/OpenAI vocab.bpe (with --encoder-json)")
    voc.add_argument("--srcdict", metavar="FILE", help="reuse this dict.txt instead of building one")
    voc.add_argument("--thresholdsrc", type=int, default=0, help="drop ids seen fewer times (default 0)")
    voc.add_argument("--nwordssrc", type=int, default=-1, help="keep at most this many symbols (default all)")
    voc.add_argument("--padding-factor", type=int, default=8, help="pad dictionary size to a multiple (default 8)")
    run = p.add_argument_group("output and execution")
    run.add_argument("--destdir", required=True, metavar="DIR", help="output data directory")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding threads (default: all cores)")
    run.add_argument("--chunk-mb", type=float, default=1.0, help="text per work item in MB (default 1)")
    run.add_argument("--checkpoint-seconds", type=float, default=30.0,
                     help="save resumable progress this often (default 30)")
    run.add_argument("--force", action="store_true",
                     help="replace a different dataset (or unfinished run) in --destdir")
    run.add_argument("--quiet", action="store_true", help="no progress bar or info lines")
    return p


def _encode_all(args, streams, encoder, workdir):
    if args.workers == 1:
        return {stream.name: encode_stream(args, stream, encoder, workdir, None) for stream in streams}
    pool = ThreadPoolExecutor(args.workers, thread_name_prefix="encode")
    try:
        return {stream.name: encode_stream(args, stream, encoder, workdir, pool) for stream in streams}
    finally:
        if sys.version_info >= (3, 9):
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # no cancel_futures: the queued batches (at most 2 x workers) finish first
            pool.shutdown(wait=True)


def _run(args):
    if args.workers < 1:
        raise PrepareError("--workers must be at least 1")
    start = time.monotonic()
    vocab = VocabSource.parse(args.vocab, args.encoder_json, args.vocab_bpe)
    streams, split_names, job = make_plan(args)
    if args.srcdict:
        TokenDictionary.load(args.srcdict)  # fail early on a missing or malformed file
        job["srcdict"] = "sha256:" + sha256_files([args.srcdict])
    job["vocab"] = vocab.fingerprint()
    destdir = os.path.abspath(args.destdir)
    if os.path.exists(destdir) and not os.path.isdir(destdir):
        raise PrepareError(f"--destdir {destdir} is a file")
    os.makedirs(destdir, exist_ok=True)
    if check_destdir(args.force, destdir, split_names, job) == "complete":
        print_summary(destdir, read_json(os.path.join(destdir, MANIFEST)), None, "already complete:")
        return 0
    workdir = os.path.join(destdir, WORKDIR)
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "job.json"), job)
    try:
        encoder = LineEncoder(vocab.build())
    except ValueError as e:
        raise PrepareError(f"vocabulary {vocab.describe()}: {e}") from None
    info(args.quiet, f"vocabulary {vocab.describe()} ({encoder.n_vocab} ids); {args.workers} workers")
    states = _encode_all(args, streams, encoder, workdir)
    manifest = finalize(args, destdir, workdir, split_names, job, encoder, states, time.monotonic() - start)
    for name in split_names if job["mode"] == "raw" else ():
        if not manifest["documents"].get(name):
            warn(f"split {name} got no documents; use more input or change --split/--seed")
    print_summary(destdir, manifest, time.monotonic() - start, "wrote")
    return 0


def prepare(argv=None):
    """Run the command in-process; return its exit status (never raises for user errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error (already printed by argparse)
        return int(e.code or 0)
    try:
        return _run(args)
    except PrepareError as e:
        print(e.line(), file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        return 130
    except OSError as e:
        if os.environ.get(DEBUG_ENV):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: {e.strerror or e}{where}; fix it and rerun to resume", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{PROG}: error: internal error {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for a traceback)",
              file=sys.stderr, flush=True)
        return 1


def main(argv=None):
    sys.exit(prepare(argv))


if __name__ == "__main__":
    main()

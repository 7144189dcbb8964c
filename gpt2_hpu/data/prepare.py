"""``gpt2-hpu-prepare``: text corpus -> Fairseq data directory (dict.txt + mmap .bin/.idx).

Two input modes:

* raw corpus (``--input`` / ``--demo-corpus``): OpenWebText archive or shards,
  folders of ``.txt``, JSONL; documents are split train/valid/test by a seeded
  hash of their name (``--split``, ``--seed``);
* pre-split (``--trainpref/--validpref/--testpref``): text files, exactly like
  ``multiprocessing_bpe_encoder.py --keep-empty`` + ``fairseq-preprocess
  --only-source`` (same dict.txt, same .bin/.idx bytes).

How it works: pass 1 encodes batches of lines with tiktoken on ``--workers``
threads (tiktoken releases the GIL) and appends raw ids + line lengths to spool
files in ``DESTDIR/.gpt2-hpu-prepare.tmp/``, checkpointing every
``--checkpoint-seconds``; pass 2 counts ids of the train split, builds dict.txt,
maps every split through it into ``.bin``/``.idx``; the outputs are renamed into
DESTDIR at the end and ``prepare.json`` (the manifest) is written last.
Memory is bounded by ``--chunk-mb`` x workers, whatever the corpus size.
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections import deque

PROG = "gpt2-hpu-prepare"
FORMAT_VERSION = 1
WORKDIR = ".gpt2-hpu-prepare.tmp"
MANIFEST = "prepare.json"
SPLIT_NAMES = ("train", "valid", "test")
INTERRUPT_ENV = "GPT2_HPU_PREPARE_EXIT_AFTER_CHECKPOINTS"  # test hook: simulate a kill
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


# --------------------------------------------------------------------------- helpers


def _info(args, message):
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_split(text):
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(x < 0 for x in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise _error(f"--split expects three percentages TRAIN,VALID,TEST with TRAIN > 0, got {text!r}")
    total = sum(parts)
    return [x / total for x in parts]


def _error(message, exit_code=1):
    from gpt2_hpu.data.errors import PrepareError

    return PrepareError(message, exit_code)


# --------------------------------------------------------------------------- plan


class Stream:
    """One pass over one input, feeding one or more splits."""

    def __init__(self, name, splits, jobs):
        self.name = name
        self.splits = splits
        self.jobs = jobs  # callable(position, stats, chunk_bytes) -> iterator of (end, batch, docs)


def _raw_jobs(corpus, split_names, cumulative, seed):
    def jobs(position, stats, chunk_bytes):
        from gpt2_hpu.data.sources import split_of, text_lines

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
        from gpt2_hpu.data.sources import read_text_chunks

        for end, lines in read_text_chunks(path, chunk_bytes, stats, start=position):
            yield end, {split: lines}, {}

    return jobs


def make_plan(args):
    """Return ``(streams, split_names, job_fingerprint)`` for the command line."""
    from gpt2_hpu.data.sources import DEMO_SPEC, RawCorpus, file_fingerprint

    raw_mode = bool(args.input or args.demo_corpus)
    pre_mode = bool(args.trainpref or args.validpref or args.testpref)
    if raw_mode and pre_mode:
        raise _error("use either --input/--demo-corpus (raw corpus) or --trainpref/--validpref/--testpref, not both")
    if not raw_mode and not pre_mode:
        raise _error("nothing to do: give --input PATH, --demo-corpus, or --trainpref FILE")
    job = {"format": FORMAT_VERSION}
    streams = []
    if raw_mode:
        specs = list(args.input or []) + ([DEMO_SPEC] if args.demo_corpus else [])
        ratios = _parse_split(args.split or ("90,5,5" if args.demo_corpus and not args.input else "95,2.5,2.5"))
        names = [n for n, r in zip(SPLIT_NAMES, ratios) if r > 0]
        kept = [r for r in ratios if r > 0]
        cumulative = [sum(kept[: i + 1]) for i in range(len(kept))]
        cumulative[-1] = 1.0
        corpus = RawCorpus(specs)
        streams.append(Stream("corpus", names, _raw_jobs(corpus, names, cumulative, args.seed)))
        job.update(mode="raw", inputs=corpus.fingerprint(), split=[round(r, 12) for r in ratios], seed=args.seed)
        if args.srcdict is None and "train" not in names:
            raise _error("the train split is empty; give --split with TRAIN > 0")
    else:
        if not args.trainpref and not args.srcdict:
            raise _error("--trainpref is required unless --srcdict is given")
        pairs = []
        if args.trainpref:
            pairs.append(("train", args.trainpref))
        for kind, prefs in (("valid", args.validpref), ("test", args.testpref)):
            for k, pref in enumerate(prefs.split(",") if prefs else []):
                pairs.append((kind + (str(k) if k else ""), pref))
        inputs = {}
        for name, path in pairs:
            if not os.path.isfile(path):
                raise _error(f"input {path} (for {name}) not found")
            streams.append(Stream(name, [name], _file_jobs(path, name)))
            inputs[name] = file_fingerprint(path)
        names = [n for n, _ in pairs]
        job.update(mode="pre-split", inputs=inputs)
    job.update(
        thresholdsrc=args.thresholdsrc,
        nwordssrc=args.nwordssrc,
        padding_factor=args.padding_factor,
    )
    return streams, names, job


# --------------------------------------------------------------------------- destdir safety


def _outputs(split_names):
    files = ["dict.txt"]
    for name in split_names:
        files += [name + ".bin", name + ".idx"]
    return files


def _remove_outputs(destdir, split_names):
    for name in _outputs(split_names) + [MANIFEST]:
        path = os.path.join(destdir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(destdir, WORKDIR), ignore_errors=True)


def _first_difference(a, b):
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return key
    return None


def check_destdir(args, destdir, split_names, job):
    """Return "complete", "resume" or "fresh"; raise (exit 2) when --destdir holds something else."""
    manifest = _read_json(os.path.join(destdir, MANIFEST))
    workdir = os.path.join(destdir, WORKDIR)
    work_job = _read_json(os.path.join(workdir, "job.json"))
    if manifest is not None:
        same = manifest.get("job") == job
        intact = same and all(
            os.path.isfile(os.path.join(destdir, f)) and os.path.getsize(os.path.join(destdir, f)) == size
            for f, size in manifest.get("files", {}).items()
        )
        if intact:
            return "complete"
        if not args.force:
            why = (
                f"it was made with a different '{_first_difference(manifest.get('job') or {}, job)}'"
                if not same else "its files are missing or changed"
            )
            raise _error(
                f"{destdir} holds a different dataset ({why}); use another --destdir, or --force to replace it",
                exit_code=2,
            )
        _remove_outputs(destdir, sorted(set(split_names) | set(manifest.get("splits", []))))
        return "fresh"
    if work_job is not None and work_job != job:
        if not args.force:
            raise _error(
                f"{workdir} holds an unfinished run with different settings "
                f"('{_first_difference(work_job, job)}'); rerun that command to finish it, or use --force to discard it",
                exit_code=2,
            )
        shutil.rmtree(workdir)
        work_job = None
    existing = [f for f in _outputs(split_names) if os.path.exists(os.path.join(destdir, f))]
    finalizing = work_job is not None and os.path.exists(os.path.join(workdir, "finalize.json"))
    if existing and not finalizing:
        if not args.force:
            raise _error(
                f"{destdir} already holds {', '.join(existing[:3])} not written by this command with these "
                "settings; use another --destdir, or --force to replace them",
                exit_code=2,
            )
        _remove_outputs(destdir, split_names)
        work_job = None
    return "resume" if work_job is not None else "fresh"


# --------------------------------------------------------------------------- pass 1: encode


class _Checkpointer:
    def __init__(self, path, interval):
        self.path = path
        self.interval = interval
        self.last = time.monotonic()
        self.count = 0
        limit = os.environ.get(INTERRUPT_ENV)
        self.exit_after = int(limit) if limit else None

    def save(self, state, spools, force=False):
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        for spool in spools.values():
            spool.sync()
        state["spools"] = {name: spool.state() for name, spool in spools.items()}
        _write_json_atomic(self.path, state)
        self.last = now
        self.count += 1
        if self.exit_after is not None and self.count >= self.exit_after and not state["done"]:
            os._exit(75)  # test hook: die like a killed process, no cleanup


def encode_stream(args, stream, encoder, workdir, pool):
    from gpt2_hpu.data.progress import Progress
    from gpt2_hpu.data.sources import SourceStats
    from gpt2_hpu.data.spool import Spool

    state_path = os.path.join(workdir, f"state-{stream.name}.json")
    state = _read_json(state_path) or {"position": 0, "done": False, "spools": {}, "stats": {}, "documents": {}}
    if state["done"]:
        return state
    spools = {name: Spool(workdir, name, encoder.raw_dtype) for name in stream.splits}
    for name, spool in spools.items():
        spool.open(state["spools"].get(name))
    if state["position"]:
        _info(args, f"resuming {stream.name} from its checkpoint")
    stats = SourceStats()
    checkpointer = _Checkpointer(state_path, args.checkpoint_seconds)
    progress = Progress(f"{PROG} [{stream.name}]", not args.quiet)
    chunk_bytes = max(int(args.chunk_mb * (1 << 20)), 1)
    inflight = deque()

    def encode_batch(batch):
        return {split: encoder.encode_lines(lines) for split, lines in batch.items()}

    def finish_one():
        future, end, delta, docs = inflight.popleft()
        result = future.result() if pool is not None else future
        for split, (raw, sizes) in result.items():
            spools[split].append(raw, sizes)
            progress.update(len(raw) - len(sizes))
        for key, value in delta.items():
            state["stats"][key] = state["stats"].get(key, 0) + value
        for key, value in docs.items():
            state["documents"][key] = state["documents"].get(key, 0) + value
        state["position"] = end
        checkpointer.save(state, spools)

    try:
        for end, batch, docs in stream.jobs(state["position"], stats, chunk_bytes):
            delta = stats.take_delta()
            if pool is not None:
                inflight.append((pool.submit(encode_batch, batch), end, delta, docs))
                while len(inflight) > 2 * args.workers:
                    finish_one()
            else:
                inflight.append((encode_batch(batch), end, delta, docs))
                finish_one()
        while inflight:
            finish_one()
        state["done"] = True
        checkpointer.save(state, spools, force=True)
    finally:
        progress.close()
        for spool in spools.values():
            spool.close()
    return state


# --------------------------------------------------------------------------- pass 2: dictionary + binarize


def finalize(args, destdir, workdir, split_names, job, encoder, states, elapsed_encode):
    import numpy as np

    from gpt2_hpu.data.dictionary import TokenDictionary
    from gpt2_hpu.data.indexed import best_fitting_dtype, write_index
    from gpt2_hpu.data.spool import Spool

    marker_path = os.path.join(workdir, "finalize.json")
    final_dir = os.path.join(workdir, "final")
    plan = _read_json(marker_path)
    if plan is None:
        shutil.rmtree(final_dir, ignore_errors=True)
        os.makedirs(final_dir)
        spools = {name: Spool(workdir, name, encoder.raw_dtype) for name in split_names}
        if args.srcdict:
            dictionary = TokenDictionary.load(args.srcdict)
        else:
            counts = np.zeros(encoder.eos_marker + 1, dtype=np.int64)
            for block in spools["train"].iter_raw_blocks():
                counts += np.bincount(block, minlength=len(counts))
            dictionary = TokenDictionary.from_counts(
                counts[: encoder.n_vocab], args.thresholdsrc, args.nwordssrc, args.padding_factor
            )
        out_dtype = best_fitting_dtype(len(dictionary))
        table = dictionary.lookup_table(encoder.n_vocab, encoder.eos_marker).astype(out_dtype)
        files = {}
        summary = {}
        unk = 0
        for name, spool in spools.items():
            bin_path = os.path.join(final_dir, name + ".bin")
            with open(bin_path, "wb") as out:
                for block in spool.iter_raw_blocks():
                    mapped = table[block]
                    unk += int(np.count_nonzero(mapped == 3))
                    out.write(mapped.tobytes())
                out.flush()
                os.fsync(out.fileno())
            write_index(os.path.join(final_dir, name + ".idx"), out_dtype, spool.sizes_path)
            summary[name] = {
                "sequences": os.path.getsize(spool.sizes_path) // 4,
                "tokens": os.path.getsize(spool.raw_path) // encoder.raw_dtype.itemsize,
            }
        with open(os.path.join(final_dir, "dict.txt"), "wb") as f:
            f.write(dictionary.save_text())
            f.flush()
            os.fsync(f.fileno())
        for name in _outputs(split_names):
            files[name] = os.path.getsize(os.path.join(final_dir, name))
        stats, documents = {}, {}
        for state in states.values():
            for key, value in state["stats"].items():
                stats[key] = stats.get(key, 0) + value
            for key, value in state.get("documents", {}).items():
                documents[key] = documents.get(key, 0) + value
        manifest = {
            "tool": PROG,
            "job": job,
            "splits": split_names,
            "files": files,
            "dictionary": {"symbols": len(dictionary) - 4, "dtype": out_dtype.name, "unk_tokens": unk},
            "sequences": summary,
            "documents": documents,
            "stats": stats,
            "encode_seconds": round(elapsed_encode, 3),
        }
        _write_json_atomic(os.path.join(final_dir, MANIFEST), manifest)
        _fsync_dir(final_dir)
        plan = {"files": _outputs(split_names) + [MANIFEST]}
        _write_json_atomic(marker_path, plan)
    # rename into place: data files first, dict.txt (needed to load anything) then the manifest last
    for name in plan["files"]:
        src = os.path.join(final_dir, name)
        if os.path.exists(src):
            os.replace(src, os.path.join(destdir, name))
        elif not os.path.exists(os.path.join(destdir, name)):
            raise _error(f"{src} vanished while finishing; rerun with --force to start over")
    _fsync_dir(destdir)
    manifest = _read_json(os.path.join(destdir, MANIFEST))
    shutil.rmtree(workdir, ignore_errors=True)
    return manifest


def print_summary(destdir, manifest, elapsed, status):
    d = manifest["dictionary"]
    lines = [f"{PROG}: {status} {destdir}: dict.txt with {d['symbols']} symbols, {d['dtype']} ids"]
    total = 0
    for name in manifest["splits"]:
        s = manifest["sequences"][name]
        bpe_tokens = s["tokens"] - s["sequences"]
        total += bpe_tokens
        docs = manifest["documents"].get(name)
        extra = f", {docs} documents" if docs is not None else ""
        lines.append(f"  {name}: {s['sequences']} sequences, {bpe_tokens} BPE tokens (+1 </s> each){extra}")
    st = manifest["stats"]
    skipped = [
        f"{st.get('empty_documents', 0)} empty documents",
        f"{st.get('corrupt_shards', 0)} corrupt shards",
        f"{st.get('bad_records', 0)} bad JSONL records",
    ]
    lines.append("  skipped: " + ", ".join(skipped))
    lines.append(f"  invalid UTF-8 (bytes replaced by U+FFFD): {st.get('non_utf8_documents', 0)} documents/lines")
    if d.get("unk_tokens"):
        lines.append(f"  <unk>: {d['unk_tokens']} tokens not in the dictionary")
    if elapsed is not None:
        lines.append(f"  time: {elapsed:.1f} s, {total / max(elapsed, 1e-9):,.0f} tokens/s")
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- entry points


def _run(args):
    from gpt2_hpu.data.bpe import VocabSource
    from gpt2_hpu.data.dictionary import TokenDictionary
    from gpt2_hpu.data.encode import LineEncoder

    if args.workers < 1:
        raise _error("--workers must be at least 1")
    start = time.monotonic()
    vocab = VocabSource.parse(args.vocab, args.encoder_json, args.vocab_bpe)
    streams, split_names, job = make_plan(args)
    if args.srcdict:
        TokenDictionary.load(args.srcdict)  # fail early on a missing or malformed file
        job["srcdict"] = "sha256:" + _sha256(args.srcdict)
    job["vocab"] = vocab.fingerprint()
    destdir = os.path.abspath(args.destdir)
    if os.path.exists(destdir) and not os.path.isdir(destdir):
        raise _error(f"--destdir {destdir} is a file")
    os.makedirs(destdir, exist_ok=True)
    status = check_destdir(args, destdir, split_names, job)
    if status == "complete":
        manifest = _read_json(os.path.join(destdir, MANIFEST))
        print_summary(destdir, manifest, None, "already complete:")
        return 0
    workdir = os.path.join(destdir, WORKDIR)
    os.makedirs(workdir, exist_ok=True)
    _write_json_atomic(os.path.join(workdir, "job.json"), job)
    try:
        encoder = LineEncoder(vocab.build())
    except ValueError as e:
        raise _error(f"vocabulary {vocab.describe()}: {e}")
    _info(args, f"vocabulary {vocab.describe()} ({encoder.n_vocab} ids); {args.workers} workers")
    states = {}
    pool = None
    if args.workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(args.workers, thread_name_prefix="encode")
    try:
        for stream in streams:
            states[stream.name] = encode_stream(args, stream, encoder, workdir, pool)
    finally:
        if pool is not None:
            if sys.version_info >= (3, 9):
                pool.shutdown(wait=True, cancel_futures=True)
            else:  # no cancel_futures: the queued batches (at most 2 x workers) finish first
                pool.shutdown(wait=True)
    encode_seconds = time.monotonic() - start
    manifest = finalize(args, destdir, workdir, split_names, job, encoder, states, encode_seconds)
    for name in split_names if job["mode"] == "raw" else ():
        if not manifest["documents"].get(name):
            _warn(f"split {name} got no documents; use more input or change --split/--seed")
    print_summary(destdir, manifest, time.monotonic() - start, "wrote")
    return 0


def _sha256(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(argv=None):
    """Run the command in-process; return its exit status (never raises for user errors)."""
    from gpt2_hpu.data.errors import PrepareError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error (already printed by argparse)
        return int(e.code or 0)
    try:
        return _run(args)
    except PrepareError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
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

"""Stage 2, encode: batches of text lines become raw GPT-2 ids in per-split spool files, resumably.

`encode_stream` reads one stream's batches, encodes them on `--workers` threads (tiktoken releases the GIL)
and appends ids and line lengths to spools, checkpointing every `--checkpoint-seconds`; a resumed run
starts from the last checkpoint.

The stock path (`multiprocessing_bpe_encoder.py --keep-empty`) encodes every
line after `line.strip()`; an empty line stays empty. Then fairseq-preprocess
appends `</s>` to every line. Here a batch of stripped non-empty lines is
joined with `"\\n"` and encoded in one tiktoken call: the GPT-2 pre-tokenizer
never merges a lone `"\\n"` between two non-blank characters with its
neighbours, so the `"\\n"` tokens are exactly the line boundaries and the ids
between them are the ids of each line encoded on its own (checked at run time;
on any mismatch the batch falls back to line-by-line encoding).

Output per batch: `raw` (ids, with an end-of-line marker after every line,
including empty ones) and `sizes` (int32 length of every line, marker
included), which is what the `.bin`/`.idx` will hold once the ids are mapped
through the dictionary.
"""

import os
import time
from collections import deque

import numpy as np

from gpt2_hpu.data.common import PROG, info, read_json, write_json_atomic
from gpt2_hpu.data.progress import Progress
from gpt2_hpu.data.sources import SourceStats
from gpt2_hpu.data.spool import Spool

INTERRUPT_ENV = "GPT2_HPU_PREPARE_EXIT_AFTER_CHECKPOINTS"  # test hook: simulate a kill


class LineEncoder:
    def __init__(self, encoding):
        self.encoding = encoding
        self.n_vocab = encoding.n_vocab
        if self.n_vocab < 65535:
            self.raw_dtype = np.dtype(np.uint16)
        else:
            self.raw_dtype = np.dtype(np.uint32)
        self.eos_marker = int(np.iinfo(self.raw_dtype).max)
        newline = encoding.encode_ordinary("\n")
        if len(newline) != 1:
            raise ValueError("vocabulary has no single token for '\\n'; not a byte-level BPE")
        self.newline = newline[0]
        self._has_numpy = hasattr(encoding, "encode_to_numpy")

    def _encode(self, text):
        if self._has_numpy:
            return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        return np.array(self.encoding.encode_ordinary(text), dtype=np.int64)

    def encode_lines(self, lines):
        """Encode raw lines (they get `strip()`-ed); return `(raw, sizes)`."""
        stripped = [line.strip() for line in lines]
        nonempty = [line for line in stripped if line]
        n = len(stripped)
        if not nonempty:
            return np.full(n, self.eos_marker, self.raw_dtype), np.ones(n, np.int32)
        ids = self._encode("\n".join(nonempty))
        boundaries = np.flatnonzero(ids == self.newline)
        if len(boundaries) != len(nonempty) - 1:
            return self._encode_line_by_line(stripped)
        raw = np.empty(len(ids) + 1, dtype=self.raw_dtype)
        raw[:-1] = ids
        raw[boundaries] = self.eos_marker
        raw[-1] = self.eos_marker
        line_ends = np.append(boundaries, len(ids))
        ne_sizes = np.diff(line_ends, prepend=-1)  # tokens + marker of each non-empty line
        if len(nonempty) == n:
            return raw, ne_sizes.astype(np.int32)
        is_empty = np.fromiter((not s for s in stripped), dtype=bool, count=n)
        sizes = np.ones(n, dtype=np.int32)
        sizes[~is_empty] = ne_sizes
        # an empty line becomes a lone marker, inserted after the non-empty lines before it
        nonempty_before = np.cumsum(~is_empty)[is_empty]
        starts = np.concatenate(([0], np.cumsum(ne_sizes)))
        raw = np.insert(raw, starts[nonempty_before], self.eos_marker)
        return raw, sizes

    def _encode_line_by_line(self, stripped):
        parts, sizes = [], np.empty(len(stripped), dtype=np.int32)
        marker = np.array([self.eos_marker], dtype=self.raw_dtype)
        for i, line in enumerate(stripped):
            ids = self._encode(line).astype(self.raw_dtype) if line else marker[:0]
            parts.append(ids)
            parts.append(marker)
            sizes[i] = len(ids) + 1
        return np.concatenate(parts), sizes


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
        write_json_atomic(self.path, state)
        self.last = now
        self.count += 1
        if self.exit_after is not None and self.count >= self.exit_after and not state["done"]:
            os._exit(75)  # test hook: die like a killed process, no cleanup


def _add_counts(total, delta):
    for key, value in delta.items():
        total[key] = total.get(key, 0) + value


def encode_stream(args, stream, encoder, workdir, pool):
    """Encode `stream` into spools under `workdir`; return its final state (positions, counts)."""
    state_path = os.path.join(workdir, f"state-{stream.name}.json")
    state = read_json(state_path) or {"position": 0, "done": False, "spools": {}, "stats": {}, "documents": {}}
    if state["done"]:
        return state
    spools = {name: Spool(workdir, name, encoder.raw_dtype) for name in stream.splits}
    for name, spool in spools.items():
        spool.open(state["spools"].get(name))
    if state["position"]:
        info(args.quiet, f"resuming {stream.name} from its checkpoint")
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
        _add_counts(state["stats"], delta)
        _add_counts(state["documents"], docs)
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

"""Turn batches of text lines into raw GPT-2 ids, the way the stock encoder would.

The stock path (``multiprocessing_bpe_encoder.py --keep-empty``) encodes every
line after ``line.strip()``; an empty line stays empty. Then fairseq-preprocess
appends ``</s>`` to every line. Here a batch of stripped non-empty lines is
joined with ``"\\n"`` and encoded in one tiktoken call: the GPT-2 pre-tokenizer
never merges a lone ``"\\n"`` between two non-blank characters with its
neighbours, so the ``"\\n"`` tokens are exactly the line boundaries and the ids
between them are the ids of each line encoded on its own (checked at run time;
on any mismatch the batch falls back to line-by-line encoding).

Output per batch: ``raw`` (ids, with an end-of-line marker after every line,
including empty ones) and ``sizes`` (int32 length of every line, marker
included), which is what the ``.bin``/``.idx`` will hold once the ids are mapped
through the dictionary.
"""

import numpy as np


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
        """Encode raw lines (they get ``strip()``-ed); return ``(raw, sizes)``."""
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

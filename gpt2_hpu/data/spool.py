"""Per-split spool files: raw token ids (`NAME.raw`) and line lengths (`NAME.sizes`).

The first pass appends encoded batches here; once the dictionary is known the
second pass maps `NAME.raw` into `NAME.bin` and turns `NAME.sizes` into
`NAME.idx`. A checkpoint records the file lengths; a resumed run truncates the
files back to them, so work done after the last checkpoint is simply redone.
"""

import os

import numpy as np


class Spool:
    def __init__(self, folder, name, raw_dtype):
        self.name = name
        self.raw_path = os.path.join(folder, name + ".raw")
        self.sizes_path = os.path.join(folder, name + ".sizes")
        self.raw_dtype = np.dtype(raw_dtype)
        self.tokens = 0  # ids, end-of-line markers included
        self.sequences = 0
        self._raw = self._sizes = None

    def open(self, state=None):
        """Open for appending, restoring the lengths of `state` (None: start empty)."""
        state = state or {"sequences": 0, "tokens": 0}
        self.tokens, self.sequences = int(state["tokens"]), int(state["sequences"])
        lengths = ((self.raw_path, self.tokens * self.raw_dtype.itemsize), (self.sizes_path, self.sequences * 4))
        for path, length in lengths:
            with open(path, "ab") as f:
                if f.tell() < length:
                    raise RuntimeError(f"{path} is shorter than its checkpoint")
                f.truncate(length)
        self._raw = open(self.raw_path, "ab")
        self._sizes = open(self.sizes_path, "ab")

    def append(self, raw, sizes):
        self._raw.write(np.ascontiguousarray(raw, dtype=self.raw_dtype).tobytes())
        self._sizes.write(np.ascontiguousarray(sizes, dtype=np.int32).tobytes())
        self.tokens += len(raw)
        self.sequences += len(sizes)

    def state(self):
        return {"tokens": self.tokens, "sequences": self.sequences}

    def sync(self):
        for f in (self._raw, self._sizes):
            f.flush()
            os.fsync(f.fileno())

    def close(self):
        for f in (self._raw, self._sizes):
            if f is not None:
                f.close()
        self._raw = self._sizes = None

    def iter_raw_blocks(self, block_tokens=1 << 18):
        """Read the raw ids back in blocks (bounded memory)."""
        with open(self.raw_path, "rb") as f:
            while True:
                data = f.read(block_tokens * self.raw_dtype.itemsize)
                if not data:
                    break
                yield np.frombuffer(data, dtype=self.raw_dtype)

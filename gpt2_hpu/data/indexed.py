"""Fairseq's `mmap` indexed dataset format (`PREFIX.bin` + `PREFIX.idx`), streamed.

Layout written by `fairseq.data.indexed_dataset.MMapIndexedDatasetBuilder`
(fairseq 0.12.x), reproduced byte for byte:

`.bin`: the token ids of all sequences back to back, in the index dtype.

`.idx`, little-endian:

    b"MMIDIDX\\x00\\x00"          magic (9 bytes)
    <Q  1                        version
    <B  dtype code               (8 = uint16, 9 = uint32, 5 = int64, ...)
    <Q  N                        number of sequences
    int32[N]                     sequence lengths
    int64[N]                     byte offset of each sequence in .bin

Here the lengths are streamed to a side file while the `.bin` is written and
the `.idx` is assembled from it in bounded-size blocks, so memory does not grow
with the corpus.
"""

import os
import struct

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.uint16): 8,
    np.dtype(np.uint32): 9,
    np.dtype(np.uint64): 10,
}
BLOCK = 1 << 16  # elements per block when streaming sizes / pointers


def best_fitting_dtype(dictionary_size):
    """The dtype fairseq-preprocess picks for a dictionary of this many symbols."""
    if dictionary_size < 65500:
        return np.dtype(np.uint16)
    if dictionary_size < 4294967295:
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


def write_index(idx_path, dtype, sizes_path):
    """Write `idx_path` for the sequence lengths stored (int32) in `sizes_path`."""
    dtype = np.dtype(dtype)
    n = os.path.getsize(sizes_path) // 4
    with open(idx_path, "wb") as out:
        out.write(MAGIC)
        out.write(struct.pack("<Q", VERSION))
        out.write(struct.pack("<B", DTYPE_CODES[dtype]))
        out.write(struct.pack("<Q", n))
        with open(sizes_path, "rb") as f:
            for block in iter(lambda: f.read(BLOCK * 4), b""):
                out.write(block)
        address = 0
        with open(sizes_path, "rb") as f:
            for block in iter(lambda: f.read(BLOCK * 4), b""):
                sizes = np.frombuffer(block, dtype=np.int32).astype(np.int64)
                ends = np.cumsum(sizes * dtype.itemsize) + address
                pointers = ends - sizes * dtype.itemsize
                out.write(pointers.astype("<i8").tobytes())
                if len(ends):
                    address = int(ends[-1])
        out.flush()
        os.fsync(out.fileno())

"""Stage 3, binarize: the train split's id counts give dict.txt; every split is mapped through it into
Fairseq's mmap `.bin`/`.idx`, block by block, so memory stays bounded whatever the corpus size."""
import os

import numpy as np

from gpt2_hpu.data.dictionary import UNK_INDEX, TokenDictionary
from gpt2_hpu.data.indexed import best_fitting_dtype, write_index
from gpt2_hpu.data.spool import Spool


def build_dictionary(args, spools, encoder):
    """`--srcdict` as given, or the dictionary fairseq-preprocess would build from the train split's ids."""
    if args.srcdict:
        return TokenDictionary.load(args.srcdict)
    counts = np.zeros(encoder.eos_marker + 1, dtype=np.int64)
    for block in spools["train"].iter_raw_blocks():
        counts += np.bincount(block, minlength=len(counts))
    return TokenDictionary.from_counts(counts[: encoder.n_vocab], args.thresholdsrc, args.nwordssrc,
                                       args.padding_factor)


def binarize(args, workdir, out_dir, split_names, encoder):
    """Write dict.txt and every split's `.bin`/`.idx` into `out_dir`; return the manifest's counts."""
    spools = {name: Spool(workdir, name, encoder.raw_dtype) for name in split_names}
    dictionary = build_dictionary(args, spools, encoder)
    out_dtype = best_fitting_dtype(len(dictionary))
    table = dictionary.lookup_table(encoder.n_vocab, encoder.eos_marker).astype(out_dtype)
    sequences = {}
    unk = 0
    for name, spool in spools.items():
        with open(os.path.join(out_dir, name + ".bin"), "wb") as out:
            for block in spool.iter_raw_blocks():
                ids = table[block]
                unk += int(np.count_nonzero(ids == UNK_INDEX))
                out.write(ids.tobytes())
            out.flush()
            os.fsync(out.fileno())
        write_index(os.path.join(out_dir, name + ".idx"), out_dtype, spool.sizes_path)
        sequences[name] = {
            "sequences": os.path.getsize(spool.sizes_path) // 4,
            "tokens": os.path.getsize(spool.raw_path) // encoder.raw_dtype.itemsize,
        }
    with open(os.path.join(out_dir, "dict.txt"), "wb") as f:
        f.write(dictionary.save_text())
        f.flush()
        os.fsync(f.fileno())
    summary = {"symbols": len(dictionary) - 4, "dtype": out_dtype.name, "unk_tokens": unk}
    return summary, sequences

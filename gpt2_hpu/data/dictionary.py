"""Fairseq `dict.txt` over GPT-2 token ids, built from counts without holding the corpus.

Reproduces `fairseq.data.Dictionary` as used by `fairseq-preprocess --only-source`:

* four special symbols `<s> <pad> </s> <unk>` take indices 0..3 and are not
  written to `dict.txt`;
* the symbols are the GPT-2 ids written as decimal strings; only ids seen in the
  training split are listed, by count descending, ties by the symbol *string*
  ascending (so `"10"` sorts before `"9"`), cut by `--thresholdsrc` /
  `--nwordssrc`;
* then `madeupword0000`... entries with count 0 pad the size (specials
  included) to a multiple of `--padding-factor` (8);
* a token id missing from the dictionary maps to `<unk>` (3); every sequence
  ends with `</s>` (2).
"""

import numpy as np

from gpt2_hpu.errors import PrepareError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
EOS_INDEX = 2
UNK_INDEX = 3


class TokenDictionary:
    """Fairseq dictionary contents: `symbols`/`counts` (specials first) and `indices`."""

    def __init__(self):
        self.symbols = list(SPECIALS)
        self.counts = [1, 1, 1, 1]
        self.indices = {s: i for i, s in enumerate(SPECIALS)}

    def __len__(self):
        return len(self.symbols)

    def _append(self, symbol, count, overwrite=False):
        if symbol in self.indices and not overwrite:
            self.counts[self.indices[symbol]] += count
            return
        self.indices[symbol] = len(self.symbols)
        self.symbols.append(symbol)
        self.counts.append(count)

    @classmethod
    def from_counts(cls, counts, threshold=0, nwords=-1, padding_factor=8):
        """Build the dictionary fairseq-preprocess would build from these id counts."""
        d = cls()
        ids = np.flatnonzero(counts)
        entries = sorted(((-int(counts[i]), str(int(i))) for i in ids))
        limit = len(entries) if nwords <= 0 else max(nwords - len(SPECIALS), 0)
        for neg_count, symbol in entries[:limit]:
            if -neg_count < threshold:
                break
            d._append(symbol, -neg_count)
        if padding_factor > 1:
            i = 0
            while len(d) % padding_factor:
                d._append("madeupword{:04d}".format(i), 0)
                i += 1
        return d

    @classmethod
    def load(cls, path):
        """Read a `dict.txt` the way `Dictionary.load` does."""
        d = cls()
        try:
            with open(path, "r", encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            raise PrepareError(f"dictionary {path} not found; check --srcdict") from None
        except UnicodeDecodeError:
            raise PrepareError(f"dictionary {path} is not UTF-8 text") from None
        for lineno, line in enumerate(lines, 1):
            try:
                word, field = line.rstrip().rsplit(" ", 1)
                overwrite = field == "#fairseq:overwrite"
                if overwrite:
                    word, field = word.rsplit(" ", 1)
                count = int(field)
            except ValueError:
                raise PrepareError(
                    f"{path}:{lineno}: expected '<token> <count>', got {line.rstrip()!r}"
                ) from None
            if word in d.indices and not overwrite:
                raise PrepareError(f"{path}:{lineno}: duplicate symbol {word!r}")
            d._append(word, count, overwrite=overwrite)
        return d

    def save_text(self):
        """The exact bytes of `dict.txt` (specials omitted)."""
        return "".join(
            "{} {}\n".format(s, c) for s, c in zip(self.symbols[len(SPECIALS):], self.counts[len(SPECIALS):])
        ).encode("utf-8")

    def lookup_table(self, n_ids, eos_marker):
        """Array mapping raw token id -> dictionary index; `eos_marker` maps to `</s>`."""
        size = max(n_ids, eos_marker + 1)
        table = np.full(size, UNK_INDEX, dtype=np.int64)
        for symbol, index in self.indices.items():
            if symbol.isdigit() and symbol.isascii() and str(int(symbol)) == symbol and int(symbol) < n_ids:
                table[int(symbol)] = index
        table[eos_marker] = EOS_INDEX
        return table

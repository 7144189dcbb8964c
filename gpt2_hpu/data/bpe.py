"""GPT-2 byte-level BPE through tiktoken, from local vocabulary files.

Three vocabulary sources are supported (see `VocabSource.parse`):

* a `.tiktoken` rank file (`base64(token) rank` per line); the packaged
  `gpt2.tiktoken` is the default, so nothing is ever downloaded by default;
* Fairseq/OpenAI `encoder.json` + `vocab.bpe`;
* `tiktoken:gpt2`: tiktoken's own downloadable encoding (needs internet or a
  warm tiktoken cache; only used when asked for explicitly).

The special token `<|endoftext|>` gets the id just after the ranks (50256 for
GPT-2) but is never produced from text: documents are encoded as ordinary text,
exactly like Fairseq's `gpt2` BPE encoder does.
"""

import base64
import json
import os

from gpt2_hpu.data.common import sha256_files
from gpt2_hpu.errors import PrepareError

GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
PACKAGED_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2.tiktoken")
TIKTOKEN_BUILTIN_PREFIX = "tiktoken:"


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_tiktoken_ranks(path):
    """Parse a `.tiktoken` file into `{token_bytes: rank}`."""
    ranks = {}
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):  # noqa: B007 (the error below names the line)
                line = line.strip()
                if not line:
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except FileNotFoundError:
        raise PrepareError(
            f"vocabulary file {path} not found; pass --vocab with an existing .tiktoken file"
        ) from None
    except (ValueError, TypeError):
        raise PrepareError(f"vocabulary file {path} is not a .tiktoken rank file (line {lineno})") from None
    if not ranks:
        raise PrepareError(f"vocabulary file {path} is empty")
    return ranks


def load_encoder_json_ranks(encoder_json, vocab_bpe):
    """Ranks from Fairseq/OpenAI `encoder.json` + `vocab.bpe`.

    For GPT-2 the ids in encoder.json are the BPE ranks; vocab.bpe is checked to
    agree (merge `i` must produce the token of rank `256 + i`).
    Returns `(ranks, special_tokens)`.
    """
    for path in (encoder_json, vocab_bpe):
        if not os.path.isfile(path):
            raise PrepareError(f"vocabulary file {path} not found; check --encoder-json/--vocab-bpe")
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    try:
        with open(encoder_json, "r", encoding="utf-8") as f:
            encoder = json.load(f)
        with open(vocab_bpe, "r", encoding="utf-8") as f:
            merges = [tuple(m.split()) for m in f.read().split("\n")[1:-1]]
    except (ValueError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read {encoder_json} / {vocab_bpe}: {e}") from None
    ranks, specials = {}, {}
    for token, rank in encoder.items():
        if token.startswith("<|") and token.endswith("|>"):
            specials[token] = int(rank)
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = int(rank)
        except KeyError:
            raise PrepareError(f"{encoder_json}: token {token!r} is not GPT-2 byte-level BPE") from None
    for i, merge in enumerate(merges):
        if len(merge) != 2:
            raise PrepareError(f"{vocab_bpe}: line {i + 2} is not a merge pair")
        merged = bytes(decoder[c] for c in merge[0] + merge[1])
        if ranks.get(merged) != 256 + i:
            raise PrepareError(
                f"{encoder_json} and {vocab_bpe} disagree at merge {i + 1}; they must come from the same BPE"
            )
    return ranks, specials


class VocabSource:
    """A picklable description of the vocabulary; worker processes rebuild the encoding."""

    def __init__(self, kind, paths=(), name=None):
        self.kind = kind  # "tiktoken-file" | "encoder-json" | "tiktoken-builtin"
        self.paths = tuple(os.path.abspath(p) for p in paths)
        self.name = name

    @classmethod
    def parse(cls, vocab=None, encoder_json=None, vocab_bpe=None):
        if encoder_json or vocab_bpe:
            if not (encoder_json and vocab_bpe):
                raise PrepareError("--encoder-json and --vocab-bpe must be given together")
            if vocab:
                raise PrepareError("give either --vocab or --encoder-json/--vocab-bpe, not both")
            return cls("encoder-json", (encoder_json, vocab_bpe))
        if vocab and vocab.startswith(TIKTOKEN_BUILTIN_PREFIX):
            return cls("tiktoken-builtin", (), vocab[len(TIKTOKEN_BUILTIN_PREFIX):])
        path = vocab or PACKAGED_VOCAB
        if not os.path.isfile(path):
            raise PrepareError(
                f"vocabulary file {path} not found; pass --vocab FILE.tiktoken, "
                "--encoder-json/--vocab-bpe, or --vocab tiktoken:gpt2 (downloads)"
            )
        return cls("tiktoken-file", (path,))

    def fingerprint(self):
        """A stable id of the vocabulary content (goes into the manifest)."""
        if self.kind == "tiktoken-builtin":
            return f"tiktoken:{self.name}"
        return "sha256:" + sha256_files(self.paths)

    def describe(self):
        if self.kind == "tiktoken-builtin":
            return f"tiktoken:{self.name}"
        return " + ".join(self.paths)

    def build(self):
        """Return a `tiktoken.Encoding` (imports tiktoken lazily)."""
        try:
            import tiktoken
        except ImportError:
            raise PrepareError("tiktoken is not installed; run: pip install tiktoken") from None
        if self.kind == "tiktoken-builtin":
            try:
                return tiktoken.get_encoding(self.name)
            except Exception as e:  # network errors, unknown names
                raise PrepareError(
                    f"cannot load tiktoken encoding {self.name!r} ({type(e).__name__}); it needs "
                    "internet or a tiktoken cache: use --vocab FILE.tiktoken instead"
                ) from None
        if self.kind == "encoder-json":
            ranks, specials = load_encoder_json_ranks(*self.paths)
        else:
            ranks, specials = load_tiktoken_ranks(self.paths[0]), {}
        specials = dict(specials) or {ENDOFTEXT: len(ranks)}
        try:
            return tiktoken.Encoding(
                name="gpt2-local",
                pat_str=GPT2_PATTERN,
                mergeable_ranks=ranks,
                special_tokens=specials,
            )
        except Exception as e:
            raise PrepareError(f"invalid vocabulary {self.describe()}: {e}") from None


"""The embedded demo corpus: Python's own reference-manual prose, available offline.

`pydoc_data.topics.topics` ships with CPython (about 80 topics, ~460 KB of
English text from the language reference). One topic is one document. The
README's demo prepares it with `gpt2-hpu-prepare --demo-corpus --destdir D`,
which goes through the same raw-corpus path as OpenWebText.
"""

import hashlib


def demo_documents():
    """Yield `(key, text)` for every topic, in sorted topic order."""
    # Lazy: pydoc_data.topics is half a megabyte of text that only the demo corpus reads.
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc/{name}", topics[name]


def demo_fingerprint():
    h = hashlib.sha256()
    for key, text in demo_documents():
        h.update(key.encode("utf-8") + b"\x00" + text.encode("utf-8") + b"\x00")
    return h.hexdigest()

"""A tokens/s progress display on stderr: tqdm when installed, else a plain status line.

Shown only when stderr is a terminal and `--quiet` is not given.
"""

import sys
import time


class Progress:
    def __init__(self, label, enabled):
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.tokens = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._bar = None
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            desc=label, unit="tok", unit_scale=True, smoothing=0.1, file=sys.stderr, dynamic_ncols=True
        )

    def update(self, tokens):
        self.tokens += tokens
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(tokens)
            return
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            rate = self.tokens / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r{self.label}: {self.tokens / 1e6:.2f}M tokens, {rate / 1e3:.0f}k tok/s ")
            sys.stderr.flush()

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()

"""Training speed that can be trusted: tokens per second over a counted window, and MFU.

`Throughput` counts only the updates after a warm-up (graph compilation, allocator growth, the first
data-loader batches) and leaves out time spent in its `paused()` block (validation, checkpoints). MFU is the
model's training FLOPs per token (`flops_per_token`) times tokens per second, over the dense bf16 peak of the
devices (`peak_bf16_flops`). Nothing here imports torch or Fairseq, so the module loads anywhere.
"""
import contextlib
import time

# Dense (no 2:4 sparsity) bf16 matrix peak per device, in FLOP/s, from the vendors' figures.
# NVIDIA datasheets print bf16 Tensor Core peaks "with sparsity"; the dense figure is half of it.
# Habana/Intel figures: "Peak Compute (BF16)" in Intel's Gaudi 3 Hot Chips 2024 deck (Gaudi, Gaudi 2, Gaudi 3)
# and the Gaudi 3 white paper's "BF16 Matrix TFLOPs".
# Keys are matched in the device name upper-cased without spaces or hyphens, first match wins: longer first.
PEAK_BF16_FLOPS = (
    ("GAUDI3", 1835e12),  # Gaudi 3 (HL-325L OAM), MME bf16
    ("GAUDI2", 432e12),  # Gaudi 2 (HL-225H), MME bf16
    ("GAUDI", 60e12),  # first-generation Gaudi (HL-205)
    ("H200NVL", 835e12),  # H200 NVL datasheet: 1,671 TFLOPS bf16 with sparsity
    ("H200", 989e12),  # H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity
    ("H100NVL", 835e12),  # H100 NVL datasheet: 1,671 TFLOPS bf16 with sparsity
    ("H100PCIE", 756e12),  # H100 PCIe datasheet: 1,513 TFLOPS bf16 with sparsity
    ("H100", 989e12),  # H100 SXM datasheet: 1,979 TFLOPS bf16 with sparsity ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),  # A100 datasheet (SXM4 and PCIe): 312 TFLOPS bf16 dense, 624 with sparsity
)


def peak_bf16_flops(device_name):
    """Dense bf16 peak FLOP/s of one device named as torch reports it, or None when unknown (CPUs).

    Names come from `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3", "NVIDIA H200",
    "NVIDIA A100-SXM4-80GB") or `torch.hpu.get_device_name()` ("GAUDI", "GAUDI2", "GAUDI3").
    """
    if not device_name:
        return None
    name = device_name.upper().replace(" ", "").replace("-", "")
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def flops_per_token(n_params, n_layers, d_model, seq_len):
    """Training FLOPs per token: `6 * n_params + 12 * n_layers * d_model * seq_len`.

    The estimate of the PaLM paper's appendix B, as nanoGPT uses it: forward and backward cost six FLOPs per
    parameter per token in the matrix products, plus attention's score and value products over `seq_len`
    positions (counted in full, as the estimate does, although a causal mask could skip half).
    `n_params` counts every weight that takes part in a matrix product, once: a token embedding tied to the
    output projection counts once (it is the output projection); a learned position table does no
    products and is left out. The recompute of activation checkpointing is not counted: MFU measures the
    model's work, not the hardware's.
    """
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def fairseq_lm_flops_per_token(model, seq_len):
    """`flops_per_token` of a Fairseq transformer language model (`TransformerLanguageModel` and its kin).

    Parameters are counted once each (shared tensors, such as a tied embedding, once), without the
    decoder's learned position embeddings; layers and width are read from the decoder.
    """
    decoder = model.decoder
    positions = getattr(decoder, "embed_positions", None)
    skip = set(id(p) for p in positions.parameters()) if positions is not None else set()
    unique = {}
    for p in model.parameters():
        if id(p) not in skip:
            unique[id(p)] = p.numel()
    return flops_per_token(sum(unique.values()), len(decoder.layers), decoder.embed_dim, seq_len)


class Throughput:
    """Tokens per second over the updates after a warm-up, less paused time; MFU when the peak is known.

    Call `start()` before the first update (construction counts as the start otherwise), `update(tokens)`
    after each update, or `update(tokens, updates=n)` at a log point that closes `n` updates, and run
    validation and checkpointing inside `with meter.paused():`. The window opens when the first
    `warmup_updates` updates are done: at the end of the call that completes them (a call that straddles
    the boundary is warm-up as a whole), and closes at the last `update` call.

    Times are host times (`clock`, `time.perf_counter` unless given). Accelerators run asynchronously, so
    the host clock only matches the device's work where the host waited for it: take the readings where the
    host synchronizes anyway, at log points that read the loss (or call the device's synchronize before
    `update`); otherwise a window's edge can fall while queued work is still running.

    `peak_flops` is one device's peak (`peak_bf16_flops`); `n_devices` devices share the counted tokens.
    """

    def __init__(self, warmup_updates=0, flops_per_token=None, peak_flops=None, n_devices=1,
                 clock=time.perf_counter):
        if warmup_updates < 0:
            raise ValueError("warmup_updates must be >= 0, got {}".format(warmup_updates))
        self.warmup_updates = warmup_updates
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.n_devices = n_devices
        self._clock = clock
        self._updates = 0
        self._counted_updates = 0
        self._counted_tokens = 0
        self._paused_total = 0.0
        self._pause_depth = 0
        self._pause_began = None
        self._open_at = None  # (clock, paused total) when the window opened
        self._last = None  # (clock, paused total) at the last counted update
        self.start()

    def start(self):
        """Mark the start of training; with no warm-up the window opens here."""
        self._updates = 0
        self._counted_updates = 0
        self._counted_tokens = 0
        self._last = None
        self._open_at = (self._clock(), self._paused_total) if self.warmup_updates == 0 else None

    def update(self, tokens, updates=1):
        """Record `updates` finished updates that processed `tokens` tokens in all."""
        now = (self._clock(), self._paused_total)
        self._updates += updates
        if self._open_at is None:
            if self._updates >= self.warmup_updates:
                self._open_at = now
            return
        self._counted_updates += updates
        self._counted_tokens += tokens
        self._last = now

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent in this block out of the window (nested blocks count once)."""
        if self._pause_depth == 0:
            self._pause_began = self._clock()
        self._pause_depth += 1
        try:
            yield self
        finally:
            self._pause_depth -= 1
            if self._pause_depth == 0:
                self._paused_total += self._clock() - self._pause_began

    @property
    def updates(self):
        """Updates recorded since `start()`, warm-up included."""
        return self._updates

    @property
    def counted_updates(self):
        return self._counted_updates

    @property
    def counted_tokens(self):
        return self._counted_tokens

    @property
    def elapsed(self):
        """Seconds in the window, paused time excluded; 0.0 before the first counted update."""
        if self._last is None:
            return 0.0
        (t0, paused0), (t1, paused1) = self._open_at, self._last
        return (t1 - t0) - (paused1 - paused0)

    @property
    def tokens_per_second(self):
        """Tokens per second over the window (all devices together), or None before it has any time."""
        elapsed = self.elapsed
        return self._counted_tokens / elapsed if elapsed > 0 else None

    @property
    def mfu(self):
        """Model FLOPs utilization (0 to 1), or None without a token rate, `flops_per_token` or peak."""
        rate = self.tokens_per_second
        if rate is None or not self.flops_per_token or not self.peak_flops:
            return None
        return rate * self.flops_per_token / (self.peak_flops * self.n_devices)

    def summary(self):
        """The window's numbers as a dict (for a log line or a JSON file)."""
        return {
            "warmup_updates": self.warmup_updates,
            "counted_updates": self._counted_updates,
            "counted_tokens": self._counted_tokens,
            "seconds": self.elapsed,
            "tokens_per_s": self.tokens_per_second,
            "mfu": self.mfu,
        }

"""The fast path: bf16 autocast, `torch.compile`, fused attention and fused AdamW, each an option of its own, and
`--fast-path` to turn on every one that applies to the run.

| option | what it does |
|---|---|
| `--bf16` | bf16 autocast around the model's forward; weights, optimizer state and loss stay fp32 |
| `--compile` | forward and backward under `torch.compile` (`hpu_backend` on HPU in eager mode, inductor elsewhere) |
| `--fused-attention` | causal self-attention through one fused kernel (FusedSDPA on HPU, SDPA elsewhere) |
| `--optimizer fused_adamw` | Fairseq adam's update rule in one fused kernel (Habana FusedAdamW, torch fused AdamW) |
| `--fast-path` | all of the above; `--compile` only in eager mode; bf16 on HPU and CUDA unless --fp16/--amp is given |

On a CPU `--fast-path` keeps fp32: CPUs without a bf16 matrix unit run bf16 matmuls many times slower.

The model's parameters and state dict are untouched: checkpoints move between the fast path and stock Fairseq.
"""
import functools
import logging

import torch
from omegaconf import open_dict

from gpt2_hpu.errors import UsageError

logger = logging.getLogger(__name__)

RECOMPILE_WARMUP_UPDATES = 2  # the first update compiles forward and backward; the second may settle guards


def expand(cfg):
    """Turns `--fast-path` into the options it stands for. Run once, in the launching process, before the
    checks (adaptations.config_checks): spawned ranks receive the expanded config."""
    common = cfg.common
    if not getattr(common, "fast_path", False):
        return
    on_accelerator = getattr(common, "hpu", False) or (torch.cuda.is_available() and not common.cpu)
    with open_dict(common):
        if on_accelerator and not (common.fp16 or common.amp or common.memory_efficient_fp16):
            common.bf16 = True
        common.fused_attention = True
        common.compile = True
    if str(getattr(cfg.optimizer, "_name", "")) == "adam":
        with open_dict(cfg.optimizer):
            cfg.optimizer._name = "fused_adamw"


def take_bf16(common):
    """The autocast dtype for this run, or None. Fairseq's own --bf16 casts the model and the criterion to bf16
    and sends argparse runs to its TPU code; the plugin keeps fp32 weights and autocasts the forward instead, so
    Fairseq's flags are cleared here, before its Trainer reads them."""
    if not (common.bf16 or common.memory_efficient_bf16):
        return None
    # (--bf16 with --fp16 or --amp never gets here: checks.precision refuses it before launch.)
    with open_dict(common):
        common.bf16 = False
        common.memory_efficient_bf16 = False
    return torch.bfloat16


def prepare_model(model, common, device_type, autocast_dtype, compile_backend, make_sdpa, lazy=False):
    """Applies the fast-path options to `model` in place; returns the CompileWatch when compiling.
    `make_sdpa()` gives the device's fused attention kernel (None: torch's)."""
    if getattr(common, "fused_attention", False):
        from gpt2_hpu.fused_attention import use_fused_attention

        changed = use_fused_attention(model, sdpa=make_sdpa())
        logger.info(f"fused causal attention in {changed} self-attention modules")
    watch = None
    compile_on = getattr(common, "compile", False)
    if compile_on and lazy:
        if getattr(common, "fast_path", False):
            logger.info("--fast-path: no torch.compile in lazy mode (graphs are cut by mark_step instead)")
            compile_on = False
        else:
            raise UsageError("--compile needs eager mode, and this HPU runs in lazy mode: set PT_HPU_LAZY_MODE=0 "
                             "(or --hpu-mode eager) to compile, or drop --compile")
    forward = model.forward
    if compile_on:
        backend = str(getattr(common, "compile_backend", "") or compile_backend)
        watch = CompileWatch(backend)
        # dynamic=False: the shapes are fixed (--sample-break-mode none), and a new shape should show as a
        # recompile in the log, not turn into a slower dynamic graph.
        forward = torch.compile(forward, backend=watch.backend, dynamic=False)
        logger.info(f"torch.compile: model forward and backward, backend {backend}")
    if autocast_dtype is not None:
        forward = functools.partial(_autocast_forward, forward, device_type, autocast_dtype)
        logger.info(f"bf16 autocast on {device_type}: fp32 weights and loss")
    if forward is not model.forward:
        # An instance attribute, so the state dict, DDP and Fairseq's model methods are unchanged; a partial of
        # a bound method, so a deepcopy of the model (EMA) calls its own forward.
        model.forward = forward
    return watch


def compile_loss(criterion, watch):
    """The criterion's loss (log_softmax over the vocabulary, then the NLL) as one compiled graph: eager, the
    fp32 log-probabilities of every token are written and read back several times, forward and backward."""
    if watch is None or not callable(getattr(criterion, "compute_loss", None)):
        return False
    # An instance attribute, as for the model: the criterion's class and state are Fairseq's own.
    criterion.compute_loss = torch.compile(criterion.compute_loss, backend=watch.backend, dynamic=False)
    logger.info(f"torch.compile: the loss of {type(criterion).__name__}")
    return True


def _autocast_forward(forward, device_type, dtype, *args, **kwargs):
    with torch.autocast(device_type=device_type, dtype=dtype):
        return forward(*args, **kwargs)


class CompileWatch:
    """Counts graph compilations and logs a warning, with dynamo's stated cause, for each one after warm-up.

    Warm-up: the first RECOMPILE_WARMUP_UPDATES updates for training, the first validation round for
    validation (no_grad and eval mode are graphs of their own)."""

    def __init__(self, backend_name):
        import torch._dynamo

        self._backend = torch._dynamo.lookup_backend(backend_name)
        self.compiles = 0
        self.recompiles_after_warmup = 0
        self._seen = 0
        self._validation_rounds = 0
        self._validating = False
        self._reasons = []
        _capture_recompile_reasons(self._reasons)

    def backend(self, graph_module, example_inputs, **kwargs):
        self.compiles += 1
        return self._backend(graph_module, example_inputs, **kwargs)

    def after_update(self, num_updates):
        self._validating = False
        self._check(num_updates > RECOMPILE_WARMUP_UPDATES, f"update {num_updates}")
        if num_updates == RECOMPILE_WARMUP_UPDATES:
            logger.info(f"torch.compile warm-up: {self.compiles} graphs compiled")

    def after_valid_step(self):
        if not self._validating:
            self._validating = True
            self._validation_rounds += 1
        self._check(self._validation_rounds > 1, "validation")

    def _check(self, warm, where):
        new, self._seen = self.compiles - self._seen, self.compiles
        if new > 0 and warm:
            self.recompiles_after_warmup += new
            cause = self._reasons[-1].strip() if self._reasons else "no cause reported by dynamo"
            logger.warning(f"torch.compile recompiled {new} graph(s) at {where}, after warm-up: {cause}")
        del self._reasons[:]


class _ReasonHandler(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage())


def _capture_recompile_reasons(sink):
    """dynamo states why it recompiles on its "recompiles" log artifact, enabled here."""
    torch._logging.set_logs(recompiles=True)
    logging.getLogger("torch._dynamo.guards.__recompiles").addHandler(_ReasonHandler(sink))


def make_speed_meter(cfg, model, device_name):
    """The meter behind the `tok_s` (this device's tokens/s) and `mfu` fields of `train_inner` lines: updates
    after the first `--speed-warmup-updates`, validation and checkpoint time left out (throughput.py)."""
    from gpt2_hpu import throughput

    seq_len = int(getattr(cfg.task, "tokens_per_sample", 0) or 0)
    return throughput.Throughput(
        warmup_updates=int(getattr(cfg.common, "speed_warmup_updates", 10)),
        flops_per_token=throughput.fairseq_lm_flops_per_token(model, seq_len) if seq_len else None,
        peak_flops=throughput.peak_bf16_flops(device_name) if device_name else None)

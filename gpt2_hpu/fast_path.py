"""The fast path: bf16 autocast, `torch.compile`, fused attention and fused AdamW, each an option of its own, and
`--fast-path` to turn on every one that applies to the run.

| option | what it does |
|---|---|
| `--bf16` | bf16 autocast around the model's forward; weights, optimizer state and loss stay fp32 |
| `--compile` | forward and backward under `torch.compile` (`hpu_backend` on HPU in eager mode, inductor elsewhere) |
| `--compile-mode` | inductor's mode: `reduce-overhead` replays CUDA graphs, launching a graph's kernels at once |
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
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # inductor's modes that replay CUDA graphs


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


def prepare_model(model, common, device_type, autocast_dtype, compile_backend, make_sdpa, lazy=False, seq_len=0):
    """Applies the fast-path options to `model` in place; returns the CompileWatch when compiling.
    `make_sdpa()` gives the device's fused attention kernel (None: torch's); `seq_len`: the tokens per sample."""
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
        watch = CompileWatch(backend, compile_mode(common))
        future_masks_on_device(model, seq_len)
        # dynamic=False: the shapes are fixed (--sample-break-mode none), and a new shape should show as a
        # recompile in the log, not turn into a slower dynamic graph.
        forward = torch.compile(forward, backend=watch.backend, dynamic=False)
        logger.info(f"torch.compile: model forward and backward, backend {backend}, mode {watch.mode}")
    if autocast_dtype is not None:
        forward = functools.partial(_autocast_forward, forward, device_type, autocast_dtype)
        logger.info(f"bf16 autocast on {device_type}: fp32 weights and loss")
    if forward is not model.forward:
        # An instance attribute, so the state dict, DDP and Fairseq's model methods are unchanged; a partial of
        # a bound method, so a deepcopy of the model (EMA) calls its own forward.
        model.forward = forward
    return watch


def compile_mode(common):
    return str(getattr(common, "compile_mode", "default") or "default")


def future_masks_on_device(model, seq_len):
    """Fills each Fairseq decoder's causal-mask cache on the model's device, for `seq_len` tokens. The decoder
    builds the mask on the host the first time it runs and keeps it on the device afterwards: compiled, that first
    forward has host work in its graph (no CUDA graph for it), and the cache's change makes dynamo compile the
    model a second time."""
    if seq_len <= 0:
        return
    for module in model.modules():
        future_mask = getattr(module, "_future_mask", None)
        param = next(module.parameters(), None)
        if isinstance(future_mask, torch.Tensor) and callable(getattr(module, "buffered_future_mask", None)) \
                and param is not None:
            module.buffered_future_mask(torch.empty(seq_len, 1, device=param.device, dtype=param.dtype))


def compile_loss(criterion, watch):
    """The criterion's loss (log_softmax over the vocabulary, then the NLL) as one compiled graph: eager, the
    fp32 log-probabilities of every token are written and read back several times, forward and backward."""
    if watch is None or not callable(getattr(criterion, "compute_loss", None)):
        return False
    compiled = torch.compile(criterion.compute_loss, backend=watch.backend, dynamic=False)
    if watch.cuda_graphs:
        # A CUDA graph writes its outputs to the same memory at every replay, and Fairseq keeps each
        # micro-batch's loss in its logging output until the update ends.
        compiled = functools.partial(owned_outputs, compiled)
    # An instance attribute, as for the model: the criterion's class and state are Fairseq's own.
    criterion.compute_loss = compiled
    logger.info(f"torch.compile: the loss of {type(criterion).__name__}")
    return True


def owned_outputs(fn, *args, **kwargs):
    """`fn`'s tensors, copied out of memory that the next call may overwrite (CUDA graph outputs)."""
    out = fn(*args, **kwargs)
    if isinstance(out, tuple):
        return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
    return out.clone() if isinstance(out, torch.Tensor) else out


def _autocast_forward(forward, device_type, dtype, *args, **kwargs):
    with torch.autocast(device_type=device_type, dtype=dtype):
        return forward(*args, **kwargs)


class CompileWatch:
    """Counts graph compilations and logs a warning, with dynamo's stated cause, for each one after warm-up.

    Warm-up: the first RECOMPILE_WARMUP_UPDATES updates for training, the first validation round for
    validation (no_grad and eval mode are graphs of their own)."""

    def __init__(self, backend_name, mode="default"):
        import torch._dynamo

        self._backend = torch._dynamo.lookup_backend(backend_name)
        self._backend_name = backend_name
        self.mode = mode
        # torch.compile(mode=...) takes no backend object; inductor takes the same mode as its config patches.
        self._config_patches = {}
        if mode != "default":
            if backend_name != "inductor":
                raise UsageError(f"--compile-mode {mode} is a mode of torch.compile's inductor backend, and this "
                                 f"run compiles with {backend_name}: leave --compile-mode out")
            from torch._inductor import list_mode_options

            self._config_patches = list_mode_options(mode)
        self.compiles = 0
        self.recompiles_after_warmup = 0
        self._seen = 0
        self._validation_rounds = 0
        self._validating = False
        self._reasons = []
        _capture_recompile_reasons(self._reasons)

    @property
    def cuda_graphs(self):
        """True when the compiled graphs replay as CUDA graphs: by --compile-mode, by inductor's own setting
        (TORCHINDUCTOR_CUDAGRAPHS=1), or with dynamo's cudagraphs backend."""
        if self._backend_name == "cudagraphs":
            return True
        if self._backend_name != "inductor":
            return False
        from torch._inductor import config

        return bool(self._config_patches.get("triton.cudagraphs", config.triton.cudagraphs))

    def backend(self, graph_module, example_inputs, **kwargs):
        self.compiles += 1
        if self._config_patches:
            kwargs["config_patches"] = {**self._config_patches, **(kwargs.get("config_patches") or {})}
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

"""The plugin's options: Fairseq's CommonConfig plus what a Gaudi run and the fast path need (in `cfg.common`)."""
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.configs import CommonConfig

HPU_MODE_CHOICES = ChoiceEnum(["auto", "lazy", "eager"])
COMPILE_MODE_CHOICES = ChoiceEnum(["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])


@dataclass
class HpuCommonConfig(CommonConfig):
    hpu: bool = field(default=False, metadata={"help": "train on Habana Gaudi (HPU) instead of CUDA/CPU"})
    hpu_mode: HPU_MODE_CHOICES = field(
        default="auto",
        metadata={"help": "HPU execution mode: lazy (graphs cut by mark_step) or eager; auto keeps "
                          "PT_HPU_LAZY_MODE, or Habana's default when it is unset"})
    zero_bucket_view: bool = field(
        default=False,
        metadata={"help": "with --zero-sharding os, let ZeroRedundancyOptimizer pack parameters into bucket "
                          "views (parameters_as_bucket_view=True); off by default, as in Habana's fork"})
    fast_path: bool = field(
        default=False,
        metadata={"help": "the fast path: --bf16 (autocast), --compile (eager mode only), --fused-attention, and "
                          "--optimizer fused_adamw in place of adam"})
    compile: bool = field(
        default=False,
        metadata={"help": "run the model's forward and backward under torch.compile (hpu_backend on HPU, which "
                          "needs eager mode; inductor elsewhere)"})
    compile_backend: str = field(
        default="", metadata={"help": "the torch.compile backend for --compile; empty: the device's own"})
    compile_mode: COMPILE_MODE_CHOICES = field(
        default="default",
        metadata={"help": "torch.compile's mode for the inductor backend (CUDA and CPU): reduce-overhead and "
                          "max-autotune replay CUDA graphs (CUDA only; gradients are then zeroed in place, not "
                          "freed, between updates, so a parameter without a gradient is still stepped), "
                          "max-autotune-no-cudagraphs tunes kernels without them"})
    fused_attention: bool = field(
        default=False,
        metadata={"help": "causal self-attention through one fused kernel (FusedSDPA on HPU, "
                          "scaled_dot_product_attention elsewhere); same parameters and checkpoints"})
    speed_warmup_updates: int = field(
        default=10, metadata={"help": "updates left out of the tokens/s and MFU of train_inner lines"})


def hpu_mode_arg(common_cfg):
    """The mode to ask the device for: None keeps the environment's choice."""
    mode = str(getattr(common_cfg, "hpu_mode", "auto") or "auto")
    return None if mode == "auto" else mode


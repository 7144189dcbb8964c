"""The `--hpu` options: Fairseq's CommonConfig plus what a Gaudi run needs (lands in `cfg.common`)."""
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.configs import CommonConfig

HPU_MODE_CHOICES = ChoiceEnum(["auto", "lazy", "eager"])


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


def hpu_mode_arg(common_cfg):
    """The mode to ask the device for: None keeps the environment's choice."""
    mode = str(getattr(common_cfg, "hpu_mode", "auto") or "auto")
    return None if mode == "auto" else mode


"""The emulated HPU refuses what a Gaudi refuses, and the plugin's fixes for what it found hold.

Each defect is shown twice: the plugin's fix switched off (in the test's own launcher, never in the product)
makes an emulated run fail or go wrong, and with the fix the run is right.
"""
import sys

import torch

from helpers import BIN, PACKAGE_DIR, TINY_MODEL, emulation_env, fairseq_train, log_records, run

# fairseq-train with one piece of the plugin switched off before training starts.
LAUNCH_WITHOUT = """
import sys
from gpt2_hpu import adaptations  # before Fairseq: importing the package with Fairseq loaded applies them all
what = sys.argv.pop(1)
import fairseq_cli.train
if what == "batch_move":
    from fairseq.trainer import Trainer
    from gpt2_hpu.hpu_trainer import HpuTrainer
    HpuTrainer._prepare_sample = Trainer._prepare_sample
else:
    adaptations._applied.add(what)  # counts as applied, so apply() leaves Fairseq's own code in place
adaptations.apply()
sys.argv[0] = "fairseq-train"
fairseq_cli.train.cli_main()
"""


def _args(data, save_dir, *extra):
    model = [a for a in TINY_MODEL if a != "--no-last-checkpoints"]
    return [data, "--user-dir", PACKAGE_DIR, "--hpu", *model, "--save-dir", save_dir, *extra]


def test_a_batch_left_on_the_host_is_refused(tiny_data, tmp_path):
    args = _args(tiny_data, tmp_path / "a", "--max-update", "3", "--no-save")
    proc = run([sys.executable, "-c", LAUNCH_WITHOUT, "batch_move", *args], env=emulation_env(1, "lazy"))
    assert proc.returncode != 0
    assert "Expected all tensors to be on the same device, but found at least two devices, hpu:0 and cpu!" \
        in proc.output, proc.output[-3000:]

    out = fairseq_train(_args(tiny_data, tmp_path / "b", "--max-update", "3", "--no-save"),
                        env=emulation_env(1, "lazy")).output
    assert len(log_records(out, "train_inner")) == 3


def _final_params(tiny_data, save_dir, *extra, launch_without=None):
    args = _args(tiny_data, save_dir, "--max-update", "3", "--dropout", "0.1", "--attention-dropout", "0.1",
                 "--update-freq", "2", *extra)
    if launch_without is None:
        fairseq_train(args, env=emulation_env(1, "lazy"))
    else:
        proc = run([sys.executable, "-c", LAUNCH_WITHOUT, launch_without, *args], env=emulation_env(1, "lazy"))
        assert proc.returncode == 0, proc.output[-3000:]
    return torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]


def test_checkpointed_recompute_replays_hpu_dropout(tiny_data, tmp_path):
    plain = _final_params(tiny_data, tmp_path / "plain")
    checkpointed = _final_params(tiny_data, tmp_path / "ckpt", "--checkpoint-activations")
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], rtol=0, atol=1e-6), name

    # Without the HPU generator in Fairseq's RNG state, the recompute draws other dropout masks.
    unfixed = _final_params(tiny_data, tmp_path / "unfixed", "--checkpoint-activations",
                            launch_without="hpu_rng_state")
    worst = max((plain[n] - unfixed[n]).abs().max().item() for n in plain)
    assert worst > 1e-4, worst


HCCL_HOST_TENSOR = """
import os, sys
import torch
import torch.distributed as dist
from gpt2_hpu.device import HpuDevice

device = HpuDevice()
device.initialize_distributed(1, 0, 0)
os.environ["MASTER_PORT"] = sys.argv[1]
dist.init_process_group("hccl", rank=0, world_size=1)
on_hpu = torch.ones(3, device=device.torch_device)
dist.all_reduce(on_hpu)
print("hpu tensor reduced:", on_hpu.cpu().tolist())
dist.all_reduce(torch.ones(3))
"""


def test_hccl_refuses_a_host_tensor():
    from gpt2_hpu.distributed import free_port

    proc = run([sys.executable, "-c", HCCL_HOST_TENSOR, str(free_port())], env=emulation_env(1, "lazy"))
    assert "hpu tensor reduced: [1.0, 1.0, 1.0]" in proc.output, proc.output[-3000:]
    assert proc.returncode != 0
    assert "hccl allreduce: expected HPU tensors, got a tensor on cpu" in proc.output, proc.output[-3000:]


PARENT_ASKS_THE_NAME = """
import subprocess, sys
from gpt2_hpu.device import HpuDevice
print("parent sees", HpuDevice().name())  # acquires the card, as the bridge's get_device_name() does
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"""


def test_a_parent_holding_the_card_starves_its_training_child(tiny_data, tmp_path):
    """What gpt2-hpu-demo did before it stopped asking the card's name: on a 1-card host the child trains
    nowhere. (tests/test_demo.py runs the demo itself on one emulated card.)"""
    child = [BIN / "fairseq-train", *_args(tiny_data, tmp_path, "--max-update", "3", "--no-save")]
    proc = run([sys.executable, "-c", PARENT_ASKS_THE_NAME, *child], env=emulation_env(1, "lazy"))
    assert "parent sees GAUDI2" in proc.output
    assert proc.returncode != 0
    assert "synStatus=26 [Device already acquired] Device acquire failed" in proc.output, proc.output[-2000:]

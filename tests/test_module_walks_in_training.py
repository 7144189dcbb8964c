"""In a training run, Fairseq's per-micro-batch walks over the model's modules (`model.train()` and
`model.set_num_updates`, once per micro-batch in its task's train_step) happen once per update with the plugin,
and the losses stay stock's."""
import json
import sys

from helpers import PACKAGE_DIR, TINY_MODEL, log_records, run

COUNT_WALKS = """
import json, sys
import torch
import fairseq_cli.train
from fairseq.models.fairseq_model import BaseFairseqModel

walks = {"train": 0, "set_num_updates": 0}
set_num_updates = BaseFairseqModel.set_num_updates
def counted_train(self, mode=True):
    walks["train"] += 1
    return torch.nn.Module.train(self, mode)
def counted_set_num_updates(self, num_updates):
    walks["set_num_updates"] += 1
    return set_num_updates(self, num_updates)
BaseFairseqModel.train = counted_train
BaseFairseqModel.set_num_updates = counted_set_num_updates
from fairseq.trainer import Trainer
trainers = []
train_step = Trainer.train_step
def recorded_train_step(self, *args, **kwargs):
    trainers[:] = [self]
    return train_step(self, *args, **kwargs)
Trainer.train_step = recorded_train_step
sys.argv[0] = "fairseq-train"
fairseq_cli.train.cli_main()
ema = trainers[0]._ema
if ema is not None:  # --store-ema: the EMA copy's own instance attributes, and its weights
    model = ema.get_model()
    walks["ema_instance_attributes"] = sorted(k for k in ("train", "set_num_updates") if k in vars(model))
    walks["ema_weights"] = [float(p.double().sum()) for p in model.parameters()]
print("WALKS " + json.dumps(walks), flush=True)
"""


def _run(tiny_data, save_dir, *extra):
    args = [tiny_data, *TINY_MODEL, "--save-dir", save_dir, "--max-update", "4", "--update-freq", "3",
            "--no-save", "--dropout", "0.1", *extra]
    proc = run([sys.executable, "-c", COUNT_WALKS, *args])
    assert proc.returncode == 0, proc.output[-3000:]
    walks = json.loads(proc.output.split("WALKS ")[-1].splitlines()[0])
    return walks, [r["loss"] for r in log_records(proc.output, "train_inner")]


def test_an_update_walks_the_modules_once(tiny_data, tmp_path):
    stock, stock_losses = _run(tiny_data, tmp_path / "stock")
    plugin, plugin_losses = _run(tiny_data, tmp_path / "plugin", "--user-dir", PACKAGE_DIR)
    updates, update_freq = 4, 3
    # Stock: the trainer's own train() at each update, then the task's train() and set_num_updates per micro-batch.
    assert stock == {"train": updates * (1 + update_freq), "set_num_updates": updates * update_freq}, stock
    assert plugin == {"train": updates, "set_num_updates": updates}, plugin
    assert len(plugin_losses) == updates and plugin_losses == stock_losses


def test_the_ema_copy_is_stocks(tiny_data, tmp_path):
    """Fairseq builds its EMA copy (a deep copy of the model) inside the first update: it has none of the update's
    shortcuts, and its weights equal stock's."""
    stock, _ = _run(tiny_data, tmp_path / "stock", "--store-ema", "--ema-decay", "0.5")
    plugin, _ = _run(tiny_data, tmp_path / "plugin", "--store-ema", "--ema-decay", "0.5", "--user-dir", PACKAGE_DIR)
    assert plugin["ema_instance_attributes"] == [] == stock["ema_instance_attributes"]
    assert plugin["ema_weights"] == stock["ema_weights"]

"""Fairseq's --amp retries an update whose fp16 gradients overflowed by calling `train_step` again from inside
`train_step`: the plugin's trainer counts that update's tokens once, and keeps the update's module-walk
shortcuts on the model through the retry."""
import types

import torch

from fairseq.trainer import Trainer

from gpt2_hpu.trainer import PluginTrainer


def test_an_amp_retry_counts_its_update_once(monkeypatch):
    calls = []

    def fairseq_train_step(self, samples, raise_oom=False):
        calls.append(sorted(k for k in ("train", "set_num_updates") if k in vars(self.model)))
        if len(calls) == 1:  # an overflow: Fairseq feeds the same batch again
            return self.train_step(samples, raise_oom)
        return {"loss": 1.0}

    monkeypatch.setattr(Trainer, "train_step", fairseq_train_step)
    monkeypatch.setattr(PluginTrainer, "_log_speed", lambda self: None)
    monkeypatch.setattr(PluginTrainer, "_log_zero_shards_once", lambda self: None)
    trainer = PluginTrainer.__new__(PluginTrainer)  # only what train_step touches
    trainer._in_train_step = False
    trainer._deferred = None  # --amp: Fairseq's finite-gradient check at once
    trainer._wrapped_model = torch.nn.Linear(2, 2)
    counted = []
    trainer.speed = types.SimpleNamespace(update=counted.append)

    assert trainer.train_step([{"ntokens": 64}, {"ntokens": 32}]) == {"loss": 1.0}
    assert calls == [["train"], ["train"]]
    assert counted == [96]
    assert not trainer._in_train_step and "train" not in vars(trainer._wrapped_model)

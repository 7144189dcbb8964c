"""The mark_step schedule on an emulated HPU, counted per update and per validation step.

Lazy mode: update_freq micro-batches + 1 optimizer step, plus one per checkpointed layer per micro-batch
with --checkpoint-activations (the tiny model has 2 layers); one per validation step. Eager mode: none.
"""
import pytest

from helpers import PACKAGE_DIR, TINY_MODEL, emulation_env, fairseq_train, log_records

LAYERS = 2


def _train(tmp_path, tiny_data, mode, update_freq, checkpoint_activations):
    args = [tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *TINY_MODEL, "--max-update", "3",
            "--update-freq", str(update_freq), "--save-dir", tmp_path / "ckpt", "--no-save"]
    args.remove("--disable-validation")
    args += ["--validate-interval-updates", "3", "--max-valid-steps", "4"]
    if checkpoint_activations:
        args.append("--checkpoint-activations")
    out = fairseq_train(args, env=emulation_env(1, mode)).output
    return log_records(out, "train_inner"), log_records(out, "valid")


@pytest.mark.parametrize("update_freq,checkpoint_activations", [(1, False), (4, False), (1, True), (4, True)])
def test_lazy_mode_schedule(tmp_path, tiny_data, update_freq, checkpoint_activations):
    train, valid = _train(tmp_path, tiny_data, "lazy", update_freq, checkpoint_activations)
    expected = update_freq + 1 + (update_freq * LAYERS if checkpoint_activations else 0)
    assert [float(r["mark_steps"]) for r in train] == [expected] * 3
    assert valid and all(float(r["valid_mark_steps"]) == 1.0 for r in valid)


@pytest.mark.parametrize("update_freq,checkpoint_activations", [(4, False), (4, True)])
def test_eager_mode_never_marks_steps(tmp_path, tiny_data, update_freq, checkpoint_activations):
    train, valid = _train(tmp_path, tiny_data, "eager", update_freq, checkpoint_activations)
    assert [float(r["mark_steps"]) for r in train] == [0.0] * 3
    assert valid and all(float(r["valid_mark_steps"]) == 0.0 for r in valid)

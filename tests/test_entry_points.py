"""HpuTrainer is the trainer under every way of starting Fairseq, and a plain run is stock Fairseq."""
import pytest

from helpers import BIN, PACKAGE_DIR, REPO, TINY_MODEL, emulation_env, fairseq_train, log_records, run


def _args(tiny_data, tmp_path, *extra):
    return [tiny_data, *TINY_MODEL, "--max-update", "4", "--save-dir", tmp_path / "ckpt", *extra]


@pytest.mark.parametrize("entry", ["fairseq-train", "python -m", "gpt2-hpu-train"])
def test_hpu_trainer_is_used(entry, tiny_data, tmp_path):
    user_dir = [] if entry == "gpt2-hpu-train" else ["--user-dir", PACKAGE_DIR]
    out = fairseq_train(_args(tiny_data, tmp_path, *user_dir, "--hpu", "--update-freq", "2"),
                        env=emulation_env(1, "lazy"), entry=entry).output
    # Only HpuTrainer reports mark_steps; 2 micro-batches + 1 optimizer step per update.
    assert [float(r["mark_steps"]) for r in log_records(out, "train_inner")] == [3.0] * 4
    assert "training on HPU (emulated, lazy mode)" in out


def test_hpu_trainer_is_used_under_hydra(tiny_data, tmp_path):
    cmd = [BIN / "gpt2-hpu-hydra-train", "--config-dir", REPO / "configs", "--config-name", "demo",
           f"task.data={tiny_data}", "common.hpu=true", "common.log_format=json", "common.log_interval=1",
           "optimization.max_update=3", "optimization.update_freq=[2]", "model.decoder_layers=1",
           "model.decoder_embed_dim=32", "model.decoder_input_dim=32", "model.decoder_output_dim=32",
           "task.tokens_per_sample=32", "dataset.disable_validation=true", "checkpoint.no_save=true",
           f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = run(cmd, env=emulation_env(1, "lazy"), cwd=tmp_path)
    assert proc.returncode == 0, proc.output[-4000:]
    assert [float(r["mark_steps"]) for r in log_records(proc.output, "train_inner")] == [3.0] * 3


def test_without_hpu_losses_equal_stock_fairseq(tiny_data, tmp_path):
    args = _args(tiny_data, tmp_path, "--update-freq", "2", "--clip-norm", "0.5", "--dropout", "0.1")
    args.remove("--disable-validation")
    args += ["--validate-interval-updates", "2", "--max-valid-steps", "3"]
    stock = fairseq_train(args, env=emulation_env(0, None)).output
    plugin = fairseq_train(args + ["--user-dir", PACKAGE_DIR], env=emulation_env(0, None)).output

    def losses(out):
        return ([r["loss"] for r in log_records(out, "train_inner")],
                [r["valid_loss"] for r in log_records(out, "valid")])

    assert len(losses(stock)[0]) == 4 and len(losses(stock)[1]) == 2
    assert losses(plugin) == losses(stock)
    assert "mark_steps" not in plugin


def test_hpu_without_habana_is_one_line(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", *_args(tiny_data, tmp_path, "--user-dir", PACKAGE_DIR, "--hpu")],
               env=emulation_env(0, None))
    assert proc.returncode != 0
    assert "Traceback" not in proc.output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpt2-hpu: error: --hpu needs Habana's PyTorch bridge")
    assert "GPT2_HPU_EMULATE" in last

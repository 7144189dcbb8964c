"""An emulated --hpu run trains, and what it saves is an ordinary Fairseq checkpoint."""
import sys

from helpers import BLOCK_PLUGIN, PACKAGE_DIR, TINY_MODEL, emulation_env, fairseq_train, log_records, run

STOCK_VALIDATE = BLOCK_PLUGIN + """
from fairseq_cli.validate import cli_main
sys.argv[0] = "fairseq-validate"
cli_main()
"""


def test_emulated_hpu_trains_and_stock_fairseq_loads_the_checkpoint(tiny_data, tmp_path):
    save_dir = tmp_path / "ckpt"
    args = [tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *TINY_MODEL, "--max-update", "40",
            "--update-freq", "2", "--clip-norm", "1.0", "--save-dir", save_dir, "--log-interval", "5"]
    args.remove("--disable-validation")
    args += ["--validate-interval-updates", "20"]
    out = fairseq_train(args, env=emulation_env(1, "lazy")).output

    train = [float(r["loss"]) for r in log_records(out, "train_inner")]
    valid = [float(r["valid_loss"]) for r in log_records(out, "valid")]
    assert len(train) == 8 and len(valid) >= 2
    assert train[-1] < train[0] - 2.0, train  # bits per token
    assert valid[-1] < valid[0], valid

    # Stock Fairseq with the plugin made unimportable: fairseq-validate reads the checkpoint, same loss.
    checkpoint = save_dir / "checkpoint_best.pt"
    proc = run([sys.executable, "-c", STOCK_VALIDATE, tiny_data, "--path", checkpoint, "--task", "language_modeling",
                "--tokens-per-sample", "32", "--batch-size", "4", "--seed", "3",
                "--log-format", "json", "--valid-subset", "valid"], env=emulation_env(0, None))
    assert proc.returncode == 0, proc.output[-3000:]
    validated = log_records(proc.output, "valid")
    assert validated and abs(float(validated[-1]["valid_loss"]) - min(valid)) < 1e-3, \
        (validated, log_records(out, "valid"))

    # The checkpoint holds plain CPU tensors and records the run's HPU settings.
    probe = ("import sys, torch; s = torch.load(sys.argv[1], map_location='meta', weights_only=False); "
             "print(all(t.device.type == 'meta' for t in s['model'].values()), s['cfg']['common']['hpu'], "
             "'gpt2_hpu' in sys.modules)")
    proc = run([sys.executable, "-c", probe, checkpoint], env=emulation_env(0, None))
    assert proc.stdout.split() == ["True", "True", "False"], proc.output

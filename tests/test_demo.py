"""The README's main job, shortened: prepare the embedded corpus, train on the best device, sample."""
from helpers import BIN, REPO, emulation_env, run


def test_demo_end_to_end_on_an_emulated_hpu(tmp_path):
    proc = run([BIN / "gpt2-hpu-demo", "--workdir", tmp_path / "demo", "--config-dir", REPO / "configs",
                "optimization.max_update=20", "dataset.validate_interval_updates=10", "common.log_interval=10"],
               env=emulation_env(1, "lazy"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.output[-3000:]
    summary = dict(line.split(None, 1) for line in proc.stdout.split("== summary")[1].strip().splitlines()
                   if line.startswith(("device", "checkpoint", "sample")))
    assert summary["device"].startswith("hpu (1 emulated card, lazy mode)")
    assert (tmp_path / "demo" / "checkpoints" / "checkpoint_last.pt").exists()
    assert summary["sample"].strip()[1:].startswith("The for statement")  # repr: either quote
    train = [line for line in proc.stdout.splitlines() if line.startswith("train loss (bits)")][0]
    first, last = (float(x) for x in train.split()[3:6:2])
    assert last < first
    assert "mark_steps=2" in proc.stdout

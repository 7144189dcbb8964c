"""The Hydra commands printed in the README and in the config headers work as printed, from a fresh directory.

Each command runs verbatim, in a new directory holding a copy of `configs/` and the data at the command's
relative `task.data`, with only size overrides appended (a tiny model, a few updates, at most 2 emulated HPUs
where the recipe asks for 8: 8 ranks on 2 CPU cores take minutes and test nothing more). Relative paths must
resolve against that directory, as with fairseq-hydra-train: no `outputs/<date>/<time>/`, checkpoints and
TensorBoard logs where the config names them.
"""
import re
import shlex
import shutil

import pytest
from omegaconf import OmegaConf

from helpers import BIN, REPO, emulation_env, log_records, run

SOURCES = [REPO / "README.md", *sorted((REPO / "configs").rglob("*.yaml"))]


def documented_commands():
    """(file name, command) for every `gpt2-hpu-hydra-train ...` line in the README and the config headers."""
    found = []
    for path in SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if path.suffix == ".yaml":
                if not text.startswith("#"):
                    continue
                text = text.lstrip("#").strip()
            if text.startswith("gpt2-hpu-hydra-train "):
                found.append((path.name, text))
    return found


COMMANDS = sorted({command for _, command in documented_commands()})

TINY = ["model.decoder_layers=1", "model.decoder_embed_dim=32", "model.decoder_input_dim=32",
        "model.decoder_output_dim=32", "model.decoder_ffn_embed_dim=64", "model.decoder_attention_heads=2",
        "task.tokens_per_sample=32", "dataset.batch_size=4", "optimization.max_update=3",
        "lr_scheduler.warmup_updates=1", "common.log_format=json", "common.log_interval=1"]


def _config_name(command):
    return shlex.split(command)[shlex.split(command).index("--config-name") + 1]


def _fresh_dir(tmp_path, tiny_data, command):
    """A new working directory as a user has it: `configs/` and the data where the command says."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    data = next(a.split("=", 1)[1] for a in shlex.split(command) if a.startswith("task.data="))
    assert not data.startswith("/"), f"documented data path {data} is not relative"
    shutil.copytree(tiny_data, tmp_path / data)
    return tmp_path


def test_every_config_has_its_command_documented():
    names = {_config_name(command) for _, command in documented_commands()}
    assert names == {p.stem for p in (REPO / "configs").glob("*.yaml")}
    # the seed recipe's command is the one the README prints
    readme = [c for f, c in documented_commands() if f == "README.md"]
    assert "gpt2-hpu-hydra-train --config-dir configs --config-name gpt2_small_8hpu " \
           "task.data=data-bin/openwebtext" in readme


@pytest.mark.parametrize("command", COMMANDS, ids=_config_name)
def test_documented_hydra_command_runs_from_a_fresh_directory(command, tiny_data, tmp_path):
    cwd = _fresh_dir(tmp_path / "work", tiny_data, command)
    cfg = OmegaConf.load(str(REPO / "configs" / (_config_name(command) + ".yaml")))
    world = min(int(OmegaConf.select(cfg, "distributed_training.distributed_world_size") or 1), 2)
    argv = shlex.split(command)
    tiny = TINY + (["distributed_training.distributed_world_size=2"] if world > 1 else [])
    proc = run([BIN / argv[0], *argv[1:], *tiny], env=emulation_env(world if cfg.common.get("hpu") else 0, "lazy"),
               cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.output[-4000:]
    assert len(log_records(proc.output, "train_inner")) == 3
    assert not (cwd / "outputs").exists(), "Hydra moved into outputs/<date>/<time>/"
    assert (cwd / cfg.checkpoint.save_dir / "checkpoint_last.pt").is_file()
    logdir = cfg.common.get("tensorboard_logdir")
    if logdir:
        assert not logdir.startswith("/")
        assert list((cwd / logdir).rglob("events.out.tfevents.*")), "no TensorBoard events where the config says"


def _demo_command():
    return next(c for c in COMMANDS if _config_name(c) == "demo")


def test_cosine_with_max_update_at_warmup_is_one_line(tiny_data, tmp_path):
    """The demo config warms up for 50 updates: max_update=50 would end in Fairseq's ZeroDivisionError."""
    command = _demo_command()
    cwd = _fresh_dir(tmp_path, tiny_data, command)
    argv = shlex.split(command)
    proc = run([BIN / argv[0], *argv[1:], "optimization.max_update=50"], env=emulation_env(0, None), cwd=cwd)
    assert proc.returncode != 0
    assert "Traceback" not in proc.output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpt2-hpu: error: --lr-scheduler cosine with --max-update equal to --warmup-updates "
                           "(50) divides by zero"), proc.output[-2000:]


def test_missing_data_is_one_line_naming_the_directory(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    argv = shlex.split(_demo_command())
    proc = run([BIN / argv[0], *argv[1:]], env=emulation_env(0, None), cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.output
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"gpt2-hpu: error: task\.data: runs/demo/data \(relative to .*\) does not exist", last), last
    assert str(tmp_path) in last


def test_cosine_check_under_fairseq_train(tiny_data, tmp_path):
    from helpers import PACKAGE_DIR, TINY_MODEL

    args = [tiny_data, *TINY_MODEL, "--user-dir", PACKAGE_DIR, "--max-update", "2",
            "--save-dir", tmp_path / "ckpt"]  # TINY_MODEL warms up for 2 updates
    proc = run([BIN / "fairseq-train", *args], env=emulation_env(0, None))
    assert proc.returncode != 0
    assert "Traceback" not in proc.output
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "gpt2-hpu: error: --lr-scheduler cosine with --max-update equal to --warmup-updates (2) divides by zero")

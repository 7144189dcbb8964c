"""Each bad input, through the real command: exit status not 0, exactly one line saying what is wrong, no traceback,
and nothing on disk changed (the save directory holds an earlier run's checkpoint, untouched). The README's
"Bad input" table lists these, with the cases tested elsewhere; the checks themselves are unit-tested in
tests/unit/test_bad_input_checks.py."""
import hashlib
import shutil
import sys

import pytest

from helpers import BIN, PACKAGE_DIR, REPO, TINY_MODEL, emulation_env, run

# Bounded, should a check ever let one of them through to training.
SHORT = ["--max-update", "2", "--warmup-updates", "1"]
HYDRA_SHORT = ["optimization.max_update=2", "lr_scheduler.warmup_updates=1", "dataset.disable_validation=true"]


def _no_training_split(tmp_path, tiny_data):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dict.txt", "valid.bin", "valid.idx"):
        shutil.copy(tiny_data / name, data / name)
    return data


def _config_with_a_typo(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    text = (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8")
    (configs / "demo.yaml").write_text(text.replace("\ncommon:\n", "\ncommon:\n  no_such_key: 1\n"), encoding="utf-8")
    return configs


def _train(entry, data, *extra):
    return [BIN / entry, data, *([] if entry == "gpt2-hpu-train" else ["--user-dir", PACKAGE_DIR]), *TINY_MODEL,
            *SHORT, *extra]


def _hydra(configs, data, *extra):
    return [BIN / "gpt2-hpu-hydra-train", "--config-dir", configs, "--config-name", "demo", f"task.data={data}",
            *HYDRA_SHORT, *extra]


# id: (command(tmp_path, tiny_data, save_dir), emulated HPUs, what the one line must say)
CASES = {
    "no-training-split": (
        lambda tmp, data, save: _train("gpt2-hpu-train", _no_training_split(tmp, data), "--save-dir", save),
        0, "has no training split 'train' (train.bin, train.idx)"),
    "hpu-with-cpu": (
        lambda tmp, data, save: _train("fairseq-train", data, "--hpu", "--cpu", "--save-dir", save),
        1, "--hpu with --cpu (common.hpu and common.cpu): choose one device"),
    "zero-sharding-on-one-rank": (
        lambda tmp, data, save: _train("gpt2-hpu-train", data, "--zero-sharding", "os", "--save-dir", save),
        0, "--zero-sharding os shards the optimizer state across data-parallel ranks, and this run has one"),
    "bf16-with-fp16": (
        lambda tmp, data, save: _train("fairseq-train", data, "--bf16", "--fp16", "--save-dir", save),
        0, "--bf16 with --fp16 or --amp: choose one precision"),
    "cuda-graphs-without-cuda": (
        lambda tmp, data, save: _train("fairseq-train", data, "--compile", "--compile-mode", "reduce-overhead",
                                       "--save-dir", save),
        0, "--compile-mode reduce-overhead replays CUDA graphs, and this run has no CUDA device"),
    "missing-user-dir": (
        lambda tmp, data, save: _train("gpt2-hpu-train", data, "--user-dir", tmp / "no-plugin", "--save-dir", save),
        0, "--user-dir {tmp}/no-plugin: no such folder"),
    "hydra-unknown-key-in-config-file": (
        lambda tmp, data, save: _hydra(_config_with_a_typo(tmp), data, f"checkpoint.save_dir={save}"),
        0, "common.no_such_key is not a setting: fix its name or remove it"),
    "hydra-unknown-key-override": (
        lambda tmp, data, save: _hydra(REPO / "configs", data, f"checkpoint.save_dir={save}", "+common.no_such_key=1"),
        0, "common.no_such_key is not a setting: fix its name or remove it"),
    "hydra-config-name-without-file": (
        lambda tmp, data, save: [BIN / "gpt2-hpu-hydra-train", "--config-dir", REPO / "configs", "--config-name",
                                 "dmeo", f"task.data={data}", f"checkpoint.save_dir={save}"],
        0, "--config-name dmeo: there is no dmeo.yaml in --config-dir"),
}


def _snapshot(*folders):
    """Every path under the folders, with its modification time and (for files) its content's hash."""
    found = {}
    for folder in folders:
        for path in [folder, *sorted(folder.rglob("*"))]:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path)] = (stat.st_mtime_ns, digest)
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_and_changes_nothing(case, tiny_data, tmp_path):
    command, devices, expected = CASES[case]
    save_dir, work = tmp_path / "save", tmp_path / "work"
    save_dir.mkdir()
    work.mkdir()
    (save_dir / "checkpoint_last.pt").write_bytes(b"an earlier run's checkpoint")
    cmd = command(tmp_path, tiny_data, save_dir)
    before = _snapshot(tmp_path, tiny_data)
    before.pop(str(work))

    proc = run(cmd, env=emulation_env(devices, "eager" if devices else None), cwd=work, timeout=120)

    errors = [line for line in proc.output.splitlines() if "error:" in line]
    assert proc.returncode != 0, proc.output[-3000:]
    assert len(errors) == 1, proc.output[-3000:]
    assert expected.format(tmp=tmp_path) in errors[0], errors
    assert "Traceback" not in proc.output, proc.output[-3000:]
    after = _snapshot(tmp_path, tiny_data)
    after = {path: state for path, state in after.items() if not path.startswith(str(work))}
    assert after == before
    print(f"{case}: exit {proc.returncode}: {errors[0]}", file=sys.stderr)

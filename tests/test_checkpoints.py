"""Checkpoints end to end (fairseq-train subprocesses): a run killed while it copies to checkpoint_last.pt, resumed;
an unreadable checkpoint_last.pt passed over; and the one-line stops that leave every file as it was: a dict.txt that
does not fit the checkpoint, a non-finite loss, a model with NaN parameters."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from gpt2_hpu import checkpoints

from helpers import PACKAGE_DIR, TINY_MODEL, emulation_env, log_records, run

# fairseq-train with the plugin loaded first, and what a test asks for in the environment:
# STOCK_CHECKPOINT_WRITES: Fairseq's own checkpoint writes and copies (the safe_checkpoints adaptation undone);
# HANG_IN_COPY_MARKER: the second copy to checkpoint_last.pt writes 4 kB, touches this file and hangs (to be killed);
# NAN_LOSS_AT_UPDATE / NAN_PARAMETER_AT_UPDATE: the loss of that update, or a parameter after its step, is NaN;
# each micro-batch's forward then prints "FORWARD <update>".
LAUNCHER = """
import os, shutil, sys, time

import fairseq_cli.train
import fairseq.checkpoint_utils as checkpoint_utils

stock_writes = checkpoint_utils.torch_persistent_save, checkpoint_utils.PathManager
import gpt2_hpu  # noqa: E402  (with Fairseq loaded, this applies the plugin's adaptations)

if os.environ.get("STOCK_CHECKPOINT_WRITES"):
    checkpoint_utils.torch_persistent_save, checkpoint_utils.PathManager = stock_writes

marker = os.environ.get("HANG_IN_COPY_MARKER")
if marker:
    shutil._USE_CP_SENDFILE = False  # shutil.copyfile then copies through shutil.copyfileobj
    stock_copyfileobj, copies = shutil.copyfileobj, []

    def copyfileobj(fsrc, fdst, *args, **kwargs):
        if "checkpoint_last.pt" in os.path.basename(fdst.name):
            copies.append(fdst.name)
            if len(copies) == 2:
                fdst.write(fsrc.read(4096))
                fdst.flush()
                open(marker, "w").close()
                time.sleep(600)
        return stock_copyfileobj(fsrc, fdst, *args, **kwargs)

    shutil.copyfileobj = copyfileobj

nan_loss_at = int(os.environ.get("NAN_LOSS_AT_UPDATE", 0))
nan_parameter_at = int(os.environ.get("NAN_PARAMETER_AT_UPDATE", 0))
if nan_loss_at or nan_parameter_at:
    import torch
    from fairseq.tasks.fairseq_task import FairseqTask

    stock_train_step, stock_optimizer_step = FairseqTask.train_step, FairseqTask.optimizer_step

    def train_step(self, sample, model, criterion, optimizer, update_num, *args, **kwargs):
        os.write(1, f"FORWARD {update_num + 1}\\n".encode())  # one write: ranks' lines do not interleave
        if update_num + 1 == nan_loss_at:
            real_criterion = criterion

            def criterion(model, sample, *a, **k):
                loss, sample_size, logging_output = real_criterion(model, sample, *a, **k)
                return loss * float("nan"), sample_size, logging_output
        return stock_train_step(self, sample, model, criterion, optimizer, update_num, *args, **kwargs)

    def optimizer_step(self, optimizer, model, update_num):
        stock_optimizer_step(self, optimizer, model, update_num)
        if update_num + 1 == nan_parameter_at:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    FairseqTask.train_step, FairseqTask.optimizer_step = train_step, optimizer_step

sys.argv[0] = "fairseq-train"
fairseq_cli.train.cli_main()
"""

MODEL = [a for a in TINY_MODEL if a != "--no-last-checkpoints"]


def _args(data, save_dir, max_update, *extra):
    return [sys.executable, "-c", LAUNCHER, data, "--user-dir", PACKAGE_DIR, "--cpu", *MODEL,
            "--max-update", str(max_update), "--save-interval-updates", "2", "--save-dir", save_dir, *extra]


def _updates(path):
    return torch.load(path, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"]


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _partials(folder):
    return [name for name in os.listdir(folder) if ".partial-" in name]


def _kill_in_second_copy_to_last(cmd, env, marker):
    job = subprocess.Popen([str(c) for c in cmd], env=dict(env, HANG_IN_COPY_MARKER=str(marker)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert job.poll() is None, job.stdout.read()[-3000:]
            assert time.time() < deadline, "the run never began its second copy to checkpoint_last.pt"
            time.sleep(0.1)
        job.send_signal(signal.SIGKILL)
    finally:
        job.kill()
        job.communicate()


def _one_line(proc):
    assert "Traceback" not in proc.output, proc.output[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def three_updates(tiny_data, tmp_path_factory):
    """A save dir after 3 updates: checkpoint_1_2.pt, and checkpoint_last.pt at update 3."""
    save_dir = tmp_path_factory.mktemp("three-updates")
    proc = run(_args(tiny_data, save_dir, 3), env=emulation_env(0, None))
    assert proc.returncode == 0, proc.output[-3000:]
    return save_dir


def _copy_of(save_dir, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(save_dir, copy)
    return copy


def test_a_kill_while_copying_to_checkpoint_last_keeps_the_previous_one_and_the_run_resumes(tiny_data, tmp_path):
    save_dir, env = tmp_path / "ckpt", emulation_env(0, None)
    cmd = _args(tiny_data, save_dir, 4)
    _kill_in_second_copy_to_last(cmd, env, tmp_path / "copying")
    assert _updates(save_dir / "checkpoint_last.pt") == 2 and _updates(save_dir / "checkpoint_1_4.pt") == 4
    assert len(_partials(save_dir)) == 1  # the killed copy, under a name no checkpoint pattern matches

    proc = run(cmd, env=env)
    assert proc.returncode == 0, proc.output[-3000:]
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ 2 updates)" in proc.output
    assert [int(r["num_updates"]) for r in log_records(proc.output, "train_inner")] == [3, 4]
    assert _updates(save_dir / "checkpoint_last.pt") == 4 and _partials(save_dir) == []


def test_fairseqs_own_copy_is_truncated_by_the_same_kill_and_the_run_resumes_from_the_newest_readable(
        tiny_data, tmp_path):
    save_dir, env = tmp_path / "ckpt", emulation_env(0, None)
    cmd = _args(tiny_data, save_dir, 6)
    _kill_in_second_copy_to_last(cmd, dict(env, STOCK_CHECKPOINT_WRITES="1"), tmp_path / "copying")
    last = save_dir / "checkpoint_last.pt"
    assert last.stat().st_size == 4096
    with pytest.raises((RuntimeError, OSError)):  # torch's error for a cut archive depends on where it was cut
        torch.load(last, map_location="cpu", weights_only=False)
    with pytest.raises(checkpoints.Unreadable) as why:
        checkpoints.probe(str(last))

    proc = run(cmd, env=env)  # with the plugin's writes again
    assert proc.returncode == 0, proc.output[-3000:]
    warnings = [line.split(" | ", 3)[-1] for line in proc.output.splitlines() if " | WARNING | " in line]
    assert warnings == [f"{last} {why.value}; resuming from {save_dir / 'checkpoint_1_4.pt'} (update 4), the newest "
                        f"readable checkpoint in {save_dir}"]
    assert str(why.value).startswith("is truncated or corrupt (4096 bytes; torch.load: ")
    assert [int(r["num_updates"]) for r in log_records(proc.output, "train_inner")] == [5, 6]
    assert _updates(last) == 6


def test_a_dictionary_that_does_not_fit_the_checkpoint_is_one_line(three_updates, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    with open(data / "dict.txt", "a") as f:
        f.writelines(f"added{i} 1\n" for i in range(8))
    save_dir = _copy_of(three_updates, tmp_path)
    before = _snapshot(save_dir)
    proc = run(_args(data, save_dir, 4), env=emulation_env(0, None))
    rows = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)["model"]["decoder.embed_tokens.weight"]
    assert proc.returncode == 2
    assert _one_line(proc) == (
        f"gpt2-hpu: error: {data / 'dict.txt'} does not match checkpoint {save_dir / 'checkpoint_last.pt'}: the "
        f"dictionary has {rows.shape[0] + 8} symbols, the checkpoint's decoder.embed_tokens.weight has "
        f"{rows.shape[0]}: train on data binarized with the checkpoint's dict.txt, or train from scratch (another "
        f"--save-dir, no --restore-file)")
    assert _snapshot(save_dir) == before


def _train_on_with_a_nan(three_updates, tiny_data, tmp_path, **inject):
    """Trains on from the 3-update save dir to update 6 with a NaN injected: (save dir, its files before, run)."""
    save_dir = _copy_of(three_updates, tmp_path)
    before = _snapshot(save_dir)
    proc = run(_args(tiny_data, save_dir, 6), env=emulation_env(0, None, **inject))
    assert proc.returncode == 1
    return save_dir, before, proc


def test_a_nan_loss_stops_the_run_in_one_line_and_keeps_the_checkpoints(three_updates, tiny_data, tmp_path):
    save_dir, before, proc = _train_on_with_a_nan(three_updates, tiny_data, tmp_path, NAN_LOSS_AT_UPDATE=4)
    assert _one_line(proc) == (
        f"gpt2-hpu: error: training stopped at update 4: gradients are Nan/Inf (FloatingPointError; Fairseq's "
        f"NanDetector lines above name where); the last checkpoint is {save_dir / 'checkpoint_last.pt'} (update 3): "
        f"relaunch to resume from it, e.g. with a lower --lr or with --clip-norm")
    # Fairseq's own dump of the model before the failed update (finite: the update was not applied) is the only
    # new file.
    after = _snapshot(save_dir)
    assert {k: v for k, v in after.items() if k != "crash.pt"} == before
    assert _updates(save_dir / "crash.pt") == 3
    assert _forwards(proc) == [4, 4]  # the update, then its rerun under the NanDetector


def _forwards(proc):
    return [int(line.split()[1]) for line in proc.output.splitlines() if line.startswith("FORWARD ")]


def test_a_nan_read_an_update_late_stops_the_run_as_the_check_at_once_does(tiny_data, tmp_path):
    # fused_adamw on torch's fused kernel: the host reads update 3's gradient norm while update 4 runs
    # (deferred_check.py), with no logging step or checkpoint in between to read it sooner.
    save_dir = tmp_path / "ckpt"
    proc = run(_args(tiny_data, save_dir, 6, "--optimizer", "fused_adamw", "--log-interval", "100"),
               env=emulation_env(0, None, NAN_LOSS_AT_UPDATE=3))
    assert proc.returncode == 1
    assert _one_line(proc) == (
        f"gpt2-hpu: error: training stopped at update 3: gradients are Nan/Inf (FloatingPointError; Fairseq's "
        f"NanDetector lines above name where); the last checkpoint is {save_dir / 'checkpoint_last.pt'} (update 2): "
        f"relaunch to resume from it, e.g. with a lower --lr or with --clip-norm")
    # Update 4 ran before the host read update 3's norm; then update 3 was replayed through Fairseq's step and
    # rerun under its NanDetector.
    assert _forwards(proc) == [1, 2, 3, 4, 3, 3]
    assert sorted(os.listdir(save_dir)) == ["checkpoint_1_2.pt", "checkpoint_last.pt", "crash.pt"]
    # crash.pt is the model before update 3, as Fairseq writes it: update 3's step was skipped on the device
    # (parameters and Adam moments as after update 2) and taken back on the host (update and step counts).
    last, crash = (torch.load(save_dir / name, map_location="cpu", weights_only=False)
                   for name in ("checkpoint_last.pt", "crash.pt"))
    assert _updates(save_dir / "crash.pt") == 2
    for name, weight in last["model"].items():
        assert torch.equal(crash["model"][name], weight), name
    last_opt, crash_opt = last["last_optimizer_state"], crash["last_optimizer_state"]
    assert [g["host_step"] for g in crash_opt["param_groups"]] == [g["host_step"] for g in last_opt["param_groups"]]
    assert [g["host_step"] for g in crash_opt["param_groups"]] == [2]
    for key, state in last_opt["state"].items():
        for field, value in state.items():
            assert torch.equal(crash_opt["state"][key][field], value), (key, field)


def test_two_ranks_stop_together_on_a_nan_first_read_at_a_checkpoint(tiny_data, tmp_path):
    # Update 3's norm is first read where Fairseq consolidates the optimizer for the checkpoint of update 3 (no
    # logging step, no validation): every rank reads it there, and all replay update 3 together (ZeRO's
    # consolidation, DDP's backward), where a read on the saving rank alone would leave the others waiting.
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.replace('sys.argv[0] = "fairseq-train"\nfairseq_cli.train.cli_main()',
                                       'if __name__ == "__main__":  # not again in the spawned ranks\n'
                                       '    sys.argv[0] = "fairseq-train"\n    fairseq_cli.train.cli_main()'))
    save_dir = tmp_path / "ckpt"
    args = _args(tiny_data, save_dir, 6, "--optimizer", "fused_adamw", "--log-interval", "100",
                 "--distributed-world-size", "2", "--ddp-backend", "c10d", "--zero-sharding", "os")
    args[args.index("--save-interval-updates") + 1] = "3"
    proc = run([sys.executable, script, *args[3:]], env=emulation_env(0, None, NAN_LOSS_AT_UPDATE=3), timeout=300)
    assert proc.returncode == 1, proc.output[-3000:]
    assert _one_line(proc) == (
        "gpt2-hpu: error: training stopped at update 3: gradients are Nan/Inf (FloatingPointError; Fairseq's "
        "NanDetector lines above name where); no checkpoint had been saved before it")
    assert sorted(os.listdir(save_dir)) == ["crash.pt"] and _updates(save_dir / "crash.pt") == 2
    assert sorted(_forwards(proc)) == sorted([1, 2, 3] * 2 + [3, 3] * 2)  # each rank: updates 1-3, then 3 twice


def test_a_nan_in_the_update_a_timed_stop_ends_on_is_read_before_the_run_ends(tiny_data, tmp_path):
    # --stop-time-hours ends the run after update 1, with no validation, no checkpoint and no logging step to read
    # update 1's norm: it is read as Fairseq's loop stops, and the run ends in the one line, not "done training".
    save_dir = tmp_path / "ckpt"
    proc = run(_args(tiny_data, save_dir, 6, "--optimizer", "fused_adamw", "--log-interval", "100", "--no-save",
                     "--disable-validation", "--stop-time-hours", "1e-9"),
               env=emulation_env(0, None, NAN_LOSS_AT_UPDATE=1))
    assert proc.returncode == 1, proc.output[-3000:]
    assert _one_line(proc) == (
        "gpt2-hpu: error: training stopped at update 1: gradients are Nan/Inf (FloatingPointError; Fairseq's "
        "NanDetector lines above name where); no checkpoint had been saved before it")
    assert _forwards(proc) == [1, 1, 1]  # update 1, its replay through Fairseq's step, and the NanDetector's rerun
    # Fairseq's crash.pt (written even with --no-save) holds the model before update 1: the update was taken back.
    assert sorted(os.listdir(save_dir)) == ["crash.pt"] and _updates(save_dir / "crash.pt") == 0


def test_a_model_with_nan_parameters_is_never_saved(three_updates, tiny_data, tmp_path):
    save_dir, before, proc = _train_on_with_a_nan(three_updates, tiny_data, tmp_path, NAN_PARAMETER_AT_UPDATE=4)
    assert _one_line(proc) == (
        f"gpt2-hpu: error: refusing to save {save_dir / 'checkpoint_1_4.pt'} at update 4: the model's parameters hold "
        f"NaN or Inf (decoder.embed_tokens.weight); the last checkpoint is {save_dir / 'checkpoint_last.pt'} "
        f"(update 3): relaunch to resume from it, e.g. with a lower --lr or with --clip-norm")
    assert _snapshot(save_dir) == before

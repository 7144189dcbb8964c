"""gpt2_hpu.checkpoints in-process: atomic durable writes and their leftovers, what counts as a readable checkpoint,
which one a run resumes from, and the one lines for what cannot be loaded or saved (torch only, no Fairseq)."""
import logging
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from gpt2_hpu import checkpoints
from gpt2_hpu.errors import CheckpointError, TrainingStopped


def _checkpoint(path, updates, rows=8):
    torch.save({"model": {"decoder.embed_tokens.weight": torch.zeros(rows, 4)},
                "optimizer_history": [{"num_updates": updates}], "extra_state": {}}, str(path))
    return path


def _cfg(save_dir, restore_file="checkpoint_last.pt"):
    return SimpleNamespace(save_dir=str(save_dir), restore_file=restore_file)


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- writing ---------------------------------------------------------------------------------------------------
def test_a_save_is_written_aside_fsynced_renamed_and_its_folder_fsynced(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_last.pt"
    target.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    checkpoints.save({"model": {"w": torch.ones(3)}}, str(target))
    temp = str(tmp_path / checkpoints.partial_name("checkpoint_last.pt"))
    assert events == [("fsync", temp), ("replace", temp, str(target)), ("fsync", str(tmp_path))]
    assert torch.equal(torch.load(str(target))["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_a_copy_replaces_the_target_whole(tmp_path):
    src = _checkpoint(tmp_path / "checkpoint_1_4.pt", 4)
    dst = _checkpoint(tmp_path / "checkpoint_last.pt", 2)
    assert checkpoints.copy(str(src), str(dst)) is True
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1_4.pt", "checkpoint_last.pt"]


def test_a_failed_write_leaves_the_target_and_no_partial_file(tmp_path):
    target = _checkpoint(tmp_path / "checkpoint_last.pt", 2)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save({"model": {"w": torch.ones(1000)}, "x": Unpicklable()}, str(target))
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_the_next_save_removes_partial_files_left_by_killed_writers(tmp_path):
    host = socket.gethostname()
    dead, alive = _dead_pid(), os.getppid()
    left = {
        checkpoints.partial_name("checkpoint_last.pt", host, alive): False,  # same target: one writer per target
        checkpoints.partial_name("checkpoint_1_2.pt", host, dead): False,  # its writer is gone
        checkpoints.partial_name("checkpoint_best.pt", host, alive): True,  # a live writer's
        checkpoints.partial_name("checkpoint_1_2.pt", "other-host", dead): True,  # cannot tell: kept
    }
    for name in left:
        (tmp_path / name).write_bytes(b"partial")
    checkpoints.save({"model": {}}, str(tmp_path / "checkpoint_last.pt"))
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint_last.pt"] + [n for n, kept in left.items() if kept])


def test_a_partial_file_is_never_taken_for_a_checkpoint(tmp_path):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    _checkpoint(tmp_path / checkpoints.partial_name("checkpoint_last.pt"), 4)  # complete, never renamed
    name = checkpoints.partial_name("checkpoint_last.pt")
    assert name.startswith(".") and not name.endswith(".pt")
    assert checkpoints.newest_readable(str(tmp_path)).path == str(tmp_path / "checkpoint_1_2.pt")


# --- reading ---------------------------------------------------------------------------------------------------
# After "torch.load: " comes the first sentence of torch's own message, which differs between torch versions.
@pytest.mark.parametrize("damage,reason", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "is truncated or corrupt (1000 bytes; torch.load: "),
    ("garbage", "is truncated or corrupt (12 bytes; torch.load: "),
    ("not a checkpoint", "is not a Fairseq checkpoint (it holds no model)"),
])
def test_what_makes_a_checkpoint_unreadable(tmp_path, damage, reason):
    path = _checkpoint(tmp_path / "c.pt", 2)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle")
    else:
        torch.save({"weights": torch.zeros(2)}, str(path))
    with pytest.raises(checkpoints.Unreadable) as e:
        checkpoints.probe(str(path))
    assert str(e.value) == reason if not reason.endswith(": ") else \
        str(e.value).startswith(reason) and str(e.value).endswith(")") and len(str(e.value)) > len(reason) + 2


def test_an_unreadable_checkpoint_last_gives_way_to_the_newest_readable_by_stored_updates(tmp_path, caplog):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    _checkpoint(tmp_path / "checkpoint_1_4.pt", 4)
    _checkpoint(tmp_path / "checkpoint1.pt", 5)  # end of epoch 1: no update count in its name
    _checkpoint(tmp_path / "checkpoint_best.pt", 4)
    _checkpoint(tmp_path / "crash.pt", 7)  # Fairseq's dump at a failure: not a place to resume from
    _checkpoint(tmp_path / "checkpoint_2_9.pt", 9).write_bytes(b"")
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    before = _snapshot(tmp_path)
    last = str(tmp_path / "checkpoint_last.pt")
    with caplog.at_level(logging.INFO, logger="gpt2_hpu.checkpoints"):
        path, found = checkpoints.choose_restore(last, _cfg(tmp_path))
    assert path == str(tmp_path / "checkpoint1.pt") and found.updates == 5
    assert [r.getMessage() for r in caplog.records] == [
        f"{last} is empty (0 bytes); resuming from {tmp_path / 'checkpoint1.pt'} (update 5), the newest readable "
        f"checkpoint in {tmp_path}"]
    assert caplog.records[0].levelno == logging.WARNING
    assert _snapshot(tmp_path) == before


def test_only_rank_0_warns(tmp_path, caplog):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="gpt2_hpu.checkpoints"):
        checkpoints.choose_restore(str(tmp_path / "checkpoint_last.pt"), _cfg(tmp_path), announce=False)
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_every_rank_picks_the_same_file_among_equal_update_counts(tmp_path):
    for name in ("checkpoint_best.pt", "checkpoint_1_4.pt", "checkpoint.best_loss_3.21.pt"):
        _checkpoint(tmp_path / name, 4)
    picks = {checkpoints.newest_readable(str(tmp_path)).path for _ in range(3)}
    assert picks == {str(tmp_path / "checkpoint.best_loss_3.21.pt")}  # the first name, whatever listdir's order


def test_no_readable_checkpoint_is_one_line_and_nothing_changes(tmp_path):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2).write_bytes(b"junk")
    last = _checkpoint(tmp_path / "checkpoint_last.pt", 4)
    last.write_bytes(last.read_bytes()[:1000])
    before = _snapshot(tmp_path)
    with pytest.raises(checkpoints.Unreadable) as why:
        checkpoints.probe(str(last))
    with pytest.raises(CheckpointError) as e:
        checkpoints.choose_restore(str(last), _cfg(tmp_path))
    assert e.value.line() == (
        f"gpt2-hpu: error: {last} {why.value}, and no other checkpoint in {tmp_path} can be read: move it away to "
        f"train from scratch, or give a good checkpoint with --restore-file")
    assert e.value.exit_code == 2 and _snapshot(tmp_path) == before


def test_an_unreadable_checkpoint_named_explicitly_is_one_line(tmp_path):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    chosen = tmp_path / "checkpoint_last.pt"
    chosen.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:  # the same file, but named: no silent substitute
        checkpoints.choose_restore(str(chosen), _cfg(tmp_path, str(chosen)), option="--restore-file")
    assert e.value.line() == \
        f"gpt2-hpu: error: --restore-file {chosen} is empty (0 bytes): give a complete checkpoint file"


def test_a_missing_checkpoint_last_whose_write_was_interrupted_resumes_from_the_newest(tmp_path):
    _checkpoint(tmp_path / "checkpoint_1_2.pt", 2)
    last = str(tmp_path / "checkpoint_last.pt")
    assert checkpoints.choose_restore(last, _cfg(tmp_path)) == (last, None)  # Fairseq's first launch
    (tmp_path / checkpoints.partial_name("checkpoint_last.pt", "h", 1)).write_bytes(b"part")
    path, found = checkpoints.choose_restore(last, _cfg(tmp_path))
    assert path == str(tmp_path / "checkpoint_1_2.pt") and found.updates == 2


def test_a_readable_checkpoint_and_remote_paths_pass_through(tmp_path):
    last = str(_checkpoint(tmp_path / "checkpoint_last.pt", 3))
    path, found = checkpoints.choose_restore(last, _cfg(tmp_path))
    assert path == last and found.updates == 3
    assert checkpoints.choose_restore("s3://bucket/checkpoint_last.pt", _cfg("s3://bucket")) == \
        ("s3://bucket/checkpoint_last.pt", None)


# --- what a checkpoint must match, what may never be saved ---------------------------------------------------------
def test_a_vocabulary_mismatch_is_found_by_the_embedding_rows():
    saved = {"decoder.embed_tokens.weight": torch.zeros(504, 64), "decoder.layers.0.fc1.weight": torch.zeros(128, 64)}
    model = {"decoder.embed_tokens.weight": (512, 64), "decoder.layers.0.fc1.weight": (128, 64)}
    assert checkpoints.vocabulary_mismatch(saved, model, {512}) == ("decoder.embed_tokens.weight", 504, 512)
    assert checkpoints.vocabulary_mismatch(saved, dict(model, **{"decoder.embed_tokens.weight": (504, 64)}),
                                           {504}) is None
    # another architecture (a different width) is not a dictionary problem: Fairseq's own message stays
    assert checkpoints.vocabulary_mismatch(saved, dict(model, **{"decoder.embed_tokens.weight": (512, 32)}),
                                           {512}) is None


def test_a_model_with_nan_is_never_saved(tmp_path):
    _checkpoint(tmp_path / "checkpoint_last.pt", 2)
    before = _snapshot(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    checkpoints.refuse_nonfinite(model, "unused", 3, str(tmp_path))  # finite: saving goes ahead
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    target = str(tmp_path / "checkpoint_1_4.pt")
    with pytest.raises(TrainingStopped) as e:
        checkpoints.refuse_nonfinite(model, target, 4, str(tmp_path))
    assert e.value.line() == (
        f"gpt2-hpu: error: refusing to save {target} at update 4: the model's parameters hold NaN or Inf (1.bias); "
        f"the last checkpoint is {tmp_path / 'checkpoint_last.pt'} (update 2): relaunch to resume from it, e.g. with "
        f"a lower --lr or with --clip-norm")
    assert e.value.exit_code == 1 and _snapshot(tmp_path) == before


def test_fairseqs_floating_point_errors_become_one_line(tmp_path):
    error = checkpoints.training_stopped(FloatingPointError("Minimum loss scale reached (0.0001). Your loss is "
                                                            "probably exploding.\nmore"), 7, str(tmp_path))
    assert error.line() == ("gpt2-hpu: error: training stopped at update 7: Minimum loss scale reached (0.0001). "
                            "Your loss is probably exploding (FloatingPointError; Fairseq's NanDetector lines above "
                            "name where); no checkpoint had been saved before it")

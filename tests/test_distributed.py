"""ZeRO-1 and multi-process training on emulated HPUs (hccl over gloo) and on CPU (gloo)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from gpt2_hpu.distributed import free_port

from helpers import BIN, BLOCK_PLUGIN, PACKAGE_DIR, REPO, TINY_MODEL, emulation_env, fairseq_train, log_records, run

STOCK_TRAIN = BLOCK_PLUGIN + """
from fairseq_cli.train import cli_main
sys.argv[0] = "fairseq-train"
cli_main()
"""

# 4 layers of equal size: ZeRO shards whole parameters, so the tiny model needs several to balance.
MODEL = [a for a in TINY_MODEL if a != "--no-last-checkpoints"]
MODEL[MODEL.index("--decoder-layers") + 1] = "4"
MODEL[MODEL.index("--decoder-ffn-embed-dim") + 1] = "256"


def _train(data, save_dir, world_size, *extra, devices=None, env_extra=None, max_update=6, timeout=400,
           mode="lazy", cwd=None):
    args = [data, "--user-dir", PACKAGE_DIR, "--hpu", *MODEL, "--distributed-world-size", str(world_size),
            "--max-update", str(max_update), "--update-freq", "2", "--clip-norm", "0.5", "--save-dir", save_dir,
            "--ddp-backend", "pytorch_ddp", *extra]
    env = emulation_env(devices or world_size, mode, **(env_extra or {}))
    return fairseq_train(args, env=env, timeout=timeout, cwd=cwd).output


def _params(checkpoint):
    return _load(checkpoint)["model"]


def _zero_shares(output):
    for line in output.splitlines():
        if "ZeRO-1 optimizer state per rank:" in line:
            shares = line.split("per rank: [")[1].split("]")[0]
            return [int(x) for x in shares.split(",")]
    raise AssertionError("no ZeRO-1 state line in the log")


def test_zero1_matches_plain_data_parallel_and_shards_the_state(tiny_data, tmp_path):
    plain = _train(tiny_data, tmp_path / "plain", 2)
    sharded = _train(tiny_data, tmp_path / "zero", 2, "--zero-sharding", "os")
    a, b = _params(tmp_path / "plain" / "checkpoint_last.pt"), _params(tmp_path / "zero" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    assert [r["loss"] for r in log_records(plain, "train_inner")] == \
        [r["loss"] for r in log_records(sharded, "train_inner")]

    # The checkpoint holds the consolidated optimizer state of every parameter, as unsharded Adam would.
    state = torch.load(tmp_path / "zero" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    optimizer = state["last_optimizer_state"]
    unsharded_state = torch.load(tmp_path / "plain" / "checkpoint_last.pt", map_location="cpu",
                                 weights_only=False)["last_optimizer_state"]
    assert len(optimizer["state"]) == len(unsharded_state["state"]) == \
        sum(len(g["params"]) for g in optimizer["param_groups"])
    for key, values in unsharded_state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                assert torch.allclose(optimizer["state"][key][name], value, rtol=0, atol=1e-6), (key, name)
            else:
                assert optimizer["state"][key][name] == value, (key, name)
    unsharded = sum(t.numel() for s in unsharded_state["state"].values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)

    # Stock Fairseq (plugin unimportable) resumes from it on one process: model and optimizer state load.
    proc = run([sys.executable, "-c", STOCK_TRAIN, tiny_data, *MODEL, "--max-update", "8", "--save-dir",
                tmp_path / "stock", "--restore-file", tmp_path / "zero" / "checkpoint_last.pt", "--cpu"],
               env=emulation_env(0, None))
    assert proc.returncode == 0, proc.output[-3000:]
    assert [int(r["num_updates"]) for r in log_records(proc.output, "train_inner")] == [7, 8]

    # Each of the 2 ranks held about half of it.
    shares = _zero_shares(sharded)
    print(f"ZeRO-1, 2 ranks: optimizer state per rank {shares} of {unsharded} elements")
    assert sum(shares) == unsharded and len(shares) == 2
    for share in shares:
        assert abs(share - unsharded / 2) <= 0.10 * unsharded / 2, shares


def test_zero1_on_four_ranks_holds_a_quarter_each(tiny_data, tmp_path):
    out = _train(tiny_data, tmp_path / "zero4", 4, "--zero-sharding", "os", max_update=3)
    shares = _zero_shares(out)
    print(f"ZeRO-1, 4 ranks: optimizer state per rank {shares} of {sum(shares)} elements")
    assert len(shares) == 4
    for share in shares:
        assert abs(share - sum(shares) / 4) <= 0.10 * sum(shares) / 4, shares


# Exact resume, with all that makes it hard at once: gradient accumulation (update-freq 2), dropout and attention
# dropout replayed by activation checkpointing, ZeRO-1 on 2 ranks, the cosine schedule with warm-up (its period
# derived from --max-update, as in the seed recipe). A straight run of 2 x RESTART_AT updates saves at update
# RESTART_AT: inside the 4 warm-up updates, and mid-epoch (an epoch is about 50 updates here).
RESTART_AT = 3
TWO_LAYERS = ["--decoder-layers", "2"]  # over MODEL's 4: no shard balance to show here, and half the time
EXACT = [*TWO_LAYERS, "--zero-sharding", "os", "--dropout", "0.1", "--attention-dropout", "0.1",
         "--checkpoint-activations", "--warmup-updates", "4", "--save-interval-updates", str(RESTART_AT)]
# Per-update values that depend only on the training state (not on the clock or memory).
DETERMINED = ("epoch", "num_updates", "loss", "ppl", "wpb", "bsz", "lr", "gnorm", "clip")
SEED_RECIPE, FAST_PATH_OPTIMIZER = ("lazy", "adam"), ("eager", "fused_adamw")


@pytest.fixture(scope="module")
def straight_run(request, tiny_data, tmp_path_factory):
    """2 x RESTART_AT updates in one launch, in HPU mode and with the optimizer of request.param."""
    mode, optimizer = request.param
    folder = tmp_path_factory.mktemp(f"straight-{mode}-{optimizer}")
    output = _train(tiny_data, "checkpoints", 2, *EXACT, "--optimizer", optimizer, max_update=2 * RESTART_AT,
                    mode=mode, cwd=folder)
    return request.param, folder / "checkpoints", output


@pytest.mark.parametrize("straight_run", [SEED_RECIPE, FAST_PATH_OPTIMIZER], indirect=True, ids="-".join)
def test_restart_continues_bit_for_bit(tiny_data, tmp_path, straight_run):
    (mode, optimizer), straight, straight_output = straight_run
    # What a job stopped after its save at update RESTART_AT leaves behind, relaunched with the very same command
    # line (--max-update included, so the cosine schedule is the same).
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(straight / f"checkpoint_1_{RESTART_AT}.pt", tmp_path / "checkpoints" / "checkpoint_last.pt")
    restarted_output = _train(tiny_data, "checkpoints", 2, *EXACT, "--optimizer", optimizer,
                              max_update=2 * RESTART_AT, mode=mode, cwd=tmp_path)
    assert "Loaded checkpoint" in restarted_output

    at_restart = _load(straight / f"checkpoint_1_{RESTART_AT}.pt")["extra_state"]["train_iterator"]
    assert (at_restart["epoch"], at_restart["iterations_in_epoch"]) == (1, 2 * RESTART_AT)  # 2 batches an update
    straight_records = log_records(straight_output, "train_inner")
    restarted_records = log_records(restarted_output, "train_inner")
    assert [int(r["num_updates"]) for r in straight_records] == list(range(1, 2 * RESTART_AT + 1))
    assert {int(r["epoch"]) for r in straight_records} == {1}
    assert [{k: r[k] for k in DETERMINED} for r in restarted_records] == \
        [{k: r[k] for k in DETERMINED} for r in straight_records[RESTART_AT:]]

    a, b = _load(straight / "checkpoint_last.pt"), _load(tmp_path / "checkpoints" / "checkpoint_last.pt")
    _assert_identical(a["model"], b["model"], "model")
    # The consolidated optimizer state of every parameter (Adam's exp_avg, exp_avg_sq, step) and its groups.
    adam = a["last_optimizer_state"]
    assert adam["state"] and all({"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in adam["state"].values())
    _assert_identical(adam, b["last_optimizer_state"], "optimizer")
    # The running sums of the epoch's `train` line, carried across the restart in the checkpoint.
    _assert_identical(_epoch_sums(a), _epoch_sums(b), "train meters")
    assert a["extra_state"]["train_iterator"] == b["extra_state"]["train_iterator"]


@pytest.mark.parametrize("straight_run", [SEED_RECIPE], indirect=True, ids="-".join)
def test_resume_on_other_world_sizes(tiny_data, tmp_path, straight_run):
    """2 ranks (sharded) -> 4 ranks (sharded), and -> 1 rank (unsharded), from the same checkpoint."""
    _, straight, _ = straight_run
    for world_size, extra in [(4, ["--zero-sharding", "os"]), (1, [])]:
        out = _train(tiny_data, tmp_path / f"to{world_size}", world_size, *TWO_LAYERS, *extra, "--restore-file",
                     straight / f"checkpoint_1_{RESTART_AT}.pt", max_update=RESTART_AT + 2)
        assert [int(r["num_updates"]) for r in log_records(out, "train_inner")] == [RESTART_AT + 1, RESTART_AT + 2]


def _load(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


def _epoch_sums(checkpoint):
    meters = checkpoint["extra_state"]["metrics"]["train"]
    return {name: state for _, name, _, state in meters if name in DETERMINED}


def _assert_identical(a, b, where):
    """Same structure, every tensor torch.equal (bitwise, dtype included), every other value ==."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_seed_command_runs_on_two_emulated_hpus(tiny_data, tmp_path):
    """Habana's recipe, tiny dimensions: ZeRO-1, activation checkpointing, update-freq 8, 2 HPUs."""
    args = [tiny_data, "--user-dir", PACKAGE_DIR, "--distributed-world-size", "2", "--hpu", "--num-workers", "2",
            "--task", "language_modeling", "--arch", "transformer_lm_gpt", "--share-decoder-input-output-embed",
            "--dropout", "0.1", "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
            "64", "--decoder-attention-heads", "2",
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.95)", "--weight-decay", "0.1", "--clip-norm", "1.0",
            "--lr", "0.0006", "--lr-scheduler", "cosine", "--warmup-updates", "1000", "--warmup-init-lr", "1e-07",
            "--tokens-per-sample", "32", "--sample-break-mode", "none", "--zero-sharding", "os",
            "--checkpoint-activations", "--batch-size", "2", "--update-freq", "8", "--max-update", "3",
            "--save-dir", tmp_path / "ckpt", "--save-interval-updates", "2", "--keep-interval-updates", "10",
            "--log-interval", "1", "--log-format", "json", "--tensorboard-logdir", tmp_path / "tb"]
    out = fairseq_train(args, env=emulation_env(2, "lazy"), timeout=400).output
    assert "Traceback" not in out, out[-4000:]  # TensorBoard's writers were closed before the ranks ended
    # per update: 8 micro-batches + 1 optimizer step + 8 x 2 checkpointed-layer recomputes
    assert [float(r["mark_steps"]) for r in log_records(out, "train_inner")] == [25.0] * 3
    assert (tmp_path / "ckpt" / "checkpoint_1_2.pt").exists() and (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
    events = list((tmp_path / "tb" / "train_inner").glob("events.out.tfevents.*"))
    assert events and b"mark_steps" in events[0].read_bytes() and b"hpu_mem_gb" in events[0].read_bytes()


def test_cpu_gloo_data_parallel_without_hpu(tiny_data, tmp_path):
    # fused_adamw on torch's fused CPU kernel, sharded, with the finite-gradient check an update late
    # (deferred_check.py): the log shows the update's real norm (Fairseq's own check gets a stand-in), and the
    # checkpoint, saved after every rank has read the last norm, holds the host's step count.
    args = [tiny_data, "--user-dir", PACKAGE_DIR, "--cpu", *MODEL, "--distributed-world-size", "2",
            "--max-update", "3", "--save-dir", tmp_path / "ckpt", "--ddp-backend", "c10d", "--zero-sharding", "os",
            "--optimizer", "fused_adamw", "--clip-norm", "0.5", "--log-interval", "2"]
    out = fairseq_train(args, env=emulation_env(0, None)).output
    records = log_records(out, "train_inner")
    assert [int(r["num_updates"]) for r in records] == [2] and len(_zero_shares(out)) == 2
    assert 0 < float(records[0]["gnorm"]) < float("inf")
    saved = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["optimizer_history"][-1]["num_updates"] == 3
    assert [g["host_step"] for g in saved["last_optimizer_state"]["param_groups"]] == [3]


def test_torchrun_launch(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *MODEL,
           "--distributed-world-size", "2", "--max-update", "3", "--save-dir", tmp_path / "ckpt",
           "--zero-sharding", "os"]
    proc = run(cmd, env=emulation_env(2, "lazy"), timeout=400)
    assert proc.returncode == 0, proc.output[-3000:]
    assert len(log_records(proc.output, "train_inner")) == 3 and _zero_shares(proc.output)


def test_mpirun_style_launch(tiny_data, tmp_path):
    """Open MPI's variables, one process per rank, as `mpirun -n 2 -x MASTER_ADDR -x MASTER_PORT` starts them."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = emulation_env(2, "lazy", OMPI_COMM_WORLD_SIZE=2, OMPI_COMM_WORLD_RANK=rank,
                            OMPI_COMM_WORLD_LOCAL_RANK=rank, MASTER_ADDR="localhost", MASTER_PORT=port)
        args = [BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *MODEL,
                "--max-update", "3", "--save-dir", tmp_path / "ckpt", "--zero-sharding", "os"]
        procs.append(subprocess.Popen([str(a) for a in args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert _zero_shares(outputs[0]) and len(log_records(outputs[0], "train_inner")) == 3


def test_hydra_entry_point_spawns_ranks(tiny_data, tmp_path):
    cmd = [BIN / "gpt2-hpu-hydra-train", "--config-dir", REPO / "configs", "--config-name", "demo",
           f"task.data={tiny_data}", "common.hpu=true", "common.log_format=json", "common.log_interval=1",
           "distributed_training.distributed_world_size=2", "distributed_training.zero_sharding=os",
           "optimization.max_update=3", "model.decoder_layers=2", "model.decoder_embed_dim=32",
           "model.decoder_input_dim=32", "model.decoder_output_dim=32", "task.tokens_per_sample=32",
           "dataset.batch_size=2", "dataset.disable_validation=true", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = run(cmd, env=emulation_env(2, "lazy"), cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.output[-3000:]
    assert [float(r["mark_steps"]) for r in log_records(proc.output, "train_inner")] == [2.0] * 3
    assert _zero_shares(proc.output)


def test_more_ranks_than_hpus_is_one_line(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *MODEL,
                "--distributed-world-size", "4", "--max-update", "1", "--save-dir", tmp_path],
               env=emulation_env(2, "lazy"))
    assert proc.returncode == 2 and "Traceback" not in proc.output
    assert proc.stderr.strip().splitlines()[-1] == (
        "gpt2-hpu: error: --distributed-world-size 4 asks for 4 HPUs but this host has 2: lower it, "
        "or launch across hosts with torchrun or mpirun")


def test_killing_one_rank_ends_the_job_and_keeps_the_checkpoint(tiny_data, tmp_path):
    save_dir = tmp_path / "ckpt"
    args = [BIN / "fairseq-train", tiny_data, "--user-dir", PACKAGE_DIR, "--hpu", *MODEL,
            "--distributed-world-size", "2", "--max-update", "100000", "--save-dir", save_dir,
            "--save-interval-updates", "3", "--zero-sharding", "os"]
    job = subprocess.Popen([str(a) for a in args], env=emulation_env(2, "lazy"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (save_dir / "checkpoint_last.pt").exists():
            assert job.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
            time.sleep(0.5)
        ranks = _spawned_children(job.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.time()
        code = job.wait(timeout=60)
        print(f"rank 1 killed: the job exited with {code} after {time.time() - killed_at:.1f} s")
        assert code != 0 and time.time() - killed_at < 60
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    time.sleep(1)
    for pid in ranks:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), "a rank outlived the job"
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] >= 3 and state["model"]


def _spawned_children(parent):
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            children.append(int(entry))
    return sorted(children)


def _is_zombie(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_zero1_under_fairseqs_fp16_wrapper(tiny_data, tmp_path):
    """--fp16 --fp16-no-flatten-grads keeps one fp32 master per parameter, so ZeRO-1 can shard it (CPU, gloo)."""
    def train(save_dir, *extra):
        args = [tiny_data, "--user-dir", PACKAGE_DIR, "--cpu", *MODEL, "--distributed-world-size", "2",
                "--max-update", "4", "--update-freq", "2", "--clip-norm", "0.5", "--fp16",
                "--fp16-no-flatten-grads", "--save-dir", save_dir, *extra]
        return fairseq_train(args, env=emulation_env(0, None)).output

    plain, sharded = train(tmp_path / "plain"), train(tmp_path / "zero", "--zero-sharding", "os")
    assert len(_zero_shares(sharded)) == 2
    assert [r["loss"] for r in log_records(plain, "train_inner")] == \
        [r["loss"] for r in log_records(sharded, "train_inner")]
    a, b = _params(tmp_path / "plain" / "checkpoint_last.pt"), _params(tmp_path / "zero" / "checkpoint_last.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name

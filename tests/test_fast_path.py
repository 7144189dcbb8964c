"""The fast path: bf16 autocast tracks fp32, compiled training does not recompile after warm-up, an update reads
the device at most once, clipping equals Fairseq's, and checkpoints move between stock Fairseq and the fast path."""
import json
import sys

import pytest
import torch

from helpers import BIN, BLOCK_PLUGIN, PACKAGE_DIR, REPO, TINY_MODEL, emulation_env, fairseq_train, log_records, run


def _losses(output):
    return [float(r["loss"]) for r in log_records(output, "train_inner")]


def _plugin_args(data, save_dir, *extra):
    return [data, "--user-dir", PACKAGE_DIR, *TINY_MODEL, "--save-dir", save_dir, *extra]


def test_bf16_loss_curve_tracks_fp32(tiny_data, tmp_path):
    common = ["--max-update", "20", "--update-freq", "2", "--no-save", "--dropout", "0"]
    fp32 = _losses(fairseq_train(_plugin_args(tiny_data, tmp_path / "a", *common)).output)
    proc = fairseq_train(_plugin_args(tiny_data, tmp_path / "b", *common, "--bf16"))
    assert "bf16 autocast on cpu: fp32 weights and loss" in proc.output
    bf16 = _losses(proc.output)
    assert len(fp32) == len(bf16) == 20
    # bf16 keeps 8 bits of mantissa: per-update losses (base 2) differ a little, the curve does not.
    assert fp32 != bf16
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.1, (fp32, bf16)
    assert fp32[-1] < fp32[0] - 1.0 and bf16[-1] < bf16[0] - 1.0


def _compiled_run(tiny_data, save_dir, *extra):
    args = _plugin_args(tiny_data, save_dir, "--max-update", "6", "--update-freq", "2", "--no-save",
                        "--compile", "--compile-backend", "eager", "--fused-attention", *extra)
    args.remove("--disable-validation")
    args += ["--validate-interval-updates", "3"]
    return fairseq_train(args).output


def test_compiled_training_does_not_recompile_after_warm_up(tiny_data, tmp_path):
    out = _compiled_run(tiny_data, tmp_path / "static")
    assert "torch.compile: model forward and backward, backend eager" in out
    warmup = [line for line in out.splitlines() if "torch.compile warm-up:" in line]
    assert len(warmup) == 1 and int(warmup[0].split("warm-up: ")[1].split()[0]) > 0, out[-3000:]
    assert "recompiled" not in out
    assert len(log_records(out, "train_inner")) == 6 and len(log_records(out, "valid")) == 2

    # Batches of changing length (one sentence per line) make dynamo recompile: the log says so, and why.
    out = _compiled_run(tiny_data, tmp_path / "dynamic", "--sample-break-mode", "eos")
    warnings = [line for line in out.splitlines() if "torch.compile recompiled" in line]
    assert warnings and "after warm-up" in warnings[0], out[-3000:]
    assert "size mismatch" in out or "tensor" in out.split("torch.compile recompiled")[1].lower()


# Counts what an update reads back from the emulated HPU, and apart from that what Fairseq's decoder reads while it
# runs (its `prev_output_tokens.eq(pad).any()` padding test, one per micro-batch, unless the attention is fused).
COUNT_HOST_READS = """
import json, os, sys
from gpt2_hpu import adaptations
import fairseq_cli.train
adaptations.apply()
from fairseq.models.transformer import TransformerDecoder
from gpt2_hpu.emulation import device as emulated
from gpt2_hpu.trainer import PluginTrainer

in_decoder = [0]
decoder_forward = TransformerDecoder.forward
def counted_forward(self, *args, **kwargs):
    before = emulated.host_reads()
    try:
        return decoder_forward(self, *args, **kwargs)
    finally:
        in_decoder[0] += emulated.host_reads() - before
TransformerDecoder.forward = counted_forward

# Each rank writes its own file after every update: ranks' exit-time prints can be lost or interleaved.
per_update = []
train_step = PluginTrainer.train_step
def counted_step(self, samples, raise_oom=False):
    before, decoder_before = emulated.host_reads(), in_decoder[0]
    out = train_step(self, samples, raise_oom)
    decoder = in_decoder[0] - decoder_before
    per_update.append([emulated.host_reads() - before - decoder, decoder])
    with open(os.path.join(os.environ["HOST_READS_DIR"], "rank%d.json" % self.data_parallel_rank), "w") as f:
        json.dump(per_update, f)
    return out
PluginTrainer.train_step = counted_step
if __name__ == "__main__":
    sys.argv[0] = "fairseq-train"
    fairseq_cli.train.cli_main()
"""


@pytest.mark.parametrize("mode,ranks", [("eager", 1), ("lazy", 1), ("eager", 2)])
def test_an_update_reads_the_device_at_most_once(mode, ranks, tiny_data, tmp_path):
    script = tmp_path / "count_host_reads.py"
    script.write_text(COUNT_HOST_READS)
    args = _plugin_args(tiny_data, tmp_path / "ckpt", "--hpu", "--max-update", "6", "--update-freq", "2",
                        "--clip-norm", "1.0", "--no-save", "--log-interval", "100", "--distributed-world-size",
                        str(ranks), "--optimizer", "fused_adamw", "--fused-attention")
    reads_dir = tmp_path / "host-reads"
    reads_dir.mkdir()
    proc = run([sys.executable, script, *args], env=emulation_env(ranks, mode, HOST_READS_DIR=reads_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    counts = [json.loads(path.read_text()) for path in sorted(reads_dir.glob("rank*.json"))]
    assert len(counts) == ranks
    for per_update in counts:
        assert len(per_update) == 6
        # After the first two updates (DDP sets up its buckets on the second): Fairseq's finite-gradient check,
        # the one read per update. The decoder reads nothing: with fused attention the batches' padding is
        # checked on the host (padding.py).
        assert [own for own, _ in per_update[2:]] == [1] * 4, per_update
        assert [decoder for _, decoder in per_update] == [0] * 6, per_update


# On CPU with --optimizer fused_adamw (torch's fused kernel): which updates' gradient norms each update reads back
# (every `.item()` or `bool(t)` is an aten._local_scalar_dense; None for a read of anything else).
WHICH_NORMS_READ = """
import json, sys
from gpt2_hpu import adaptations
import fairseq_cli.train
adaptations.apply()
from gpt2_hpu import deferred_check
from gpt2_hpu.trainer import PluginTrainer
sys.path.insert(0, TESTS)
from kernel_helpers import HostReads

norms = {}  # update -> its norm (kept alive, so no other tensor takes its memory)
hold = deferred_check.DeferredCheck.hold
def recorded_hold(self, update, norm, samples):
    norms[update] = norm
    return hold(self, update, norm, samples)
deferred_check.DeferredCheck.hold = recorded_hold

# Each read named by the update whose norm it reads, among the norms that exist at that moment: memory freed
# earlier in an update may hold that update's own norm by its end.
class NormReads(HostReads):
    def __init__(self):
        super().__init__()
        self.updates = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.storages) > len(self.updates):
            by_storage = {n.untyped_storage().data_ptr(): u for u, n in norms.items()}
            self.updates.append(by_storage.get(self.storages[-1]))
        return out

per_update = []
train_step = PluginTrainer.train_step
def counted_step(self, samples, raise_oom=False):
    with NormReads() as reads:
        out = train_step(self, samples, raise_oom)
    per_update.append(reads.updates)
    return out
PluginTrainer.train_step = counted_step
sys.argv[0] = "fairseq-train"
fairseq_cli.train.cli_main()
print("READS " + json.dumps(per_update))
"""


def test_the_finite_gradient_check_reads_the_norm_of_the_update_before(tiny_data, tmp_path):
    script = tmp_path / "which_norms_read.py"
    script.write_text(WHICH_NORMS_READ.replace("TESTS", repr(str(REPO / "tests"))))
    args = _plugin_args(tiny_data, tmp_path / "ckpt", "--max-update", "6", "--update-freq", "2", "--clip-norm",
                        "1.0", "--no-save", "--log-interval", "4", "--speed-warmup-updates", "3",
                        "--optimizer", "fused_adamw", "--fused-attention")
    proc = run([sys.executable, script, *args], env=emulation_env(0, None))
    assert proc.returncode == 0, proc.output[-3000:]
    reads = json.loads(proc.output.split("READS ")[-1].splitlines()[0])
    # Every other read here is of a host tensor: the padding check reads the batch before it moves, and
    # Fairseq's own check reads the stand-in it is given. (The emulated HPU's test counts device reads.)
    norms_read = [[update for update in update_reads if update is not None] for update_reads in reads]
    # Update k reads update k-1's norm while its own micro-batches are queued (deferred_check.py). Update 3 ends
    # the speed warm-up, update 4 is a logging step and update 6 the last: each reads its own norm at its end,
    # before the speed reading.
    assert norms_read == [[], [1], [2, 3], [4], [], [5, 6]], reads
    assert "gnorm" in log_records(proc.output, "train_inner")[0]


def test_clipping_equals_fairseqs():
    from fairseq import utils

    from gpt2_hpu import stats

    torch.manual_seed(0)
    for max_norm in (0.0, 0.5, 1e6):
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((7, 3), (5,), (2, 2, 2))]
        twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours = stats.clip_grad_norm(params, max_norm)
        fairseqs = utils.clip_grad_norm_(twins, max_norm)
        torch.testing.assert_close(ours, fairseqs.to(ours.dtype))
        for p, q in zip(params, twins):
            torch.testing.assert_close(p.grad, q.grad)
        if max_norm == 0.5:
            total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            assert abs(float(total) - 0.5) < 1e-4


STOCK_TRAIN = BLOCK_PLUGIN + """
from fairseq_cli.train import cli_main
sys.argv[0] = "fairseq-train"
cli_main()
"""


def test_checkpoints_move_between_stock_and_the_fast_path(tiny_data, tmp_path):
    # inverse_sqrt: a schedule that does not depend on --max-update, so 3 + 3 + 3 updates can equal 9.
    stock_args = ["inverse_sqrt" if a == "cosine" else a for a in TINY_MODEL if a != "--no-last-checkpoints"]
    stock_args += ["--dropout", "0", "--attention-dropout", "0"]

    def stock(save_dir, max_update, *extra):
        proc = run([sys.executable, "-c", STOCK_TRAIN, tiny_data, *stock_args, "--max-update", max_update,
                    "--save-dir", save_dir, *extra])
        assert proc.returncode == 0, proc.output[-3000:]
        return _losses(proc.output)

    straight = stock(tmp_path / "straight", "9")
    assert len(straight) == 9
    assert stock(tmp_path / "first", "3") == straight[:3]

    # Stock checkpoint -> fused attention, compiled -> back to stock: the same run as stock straight through.
    fast = tmp_path / "fast"
    args = [tiny_data, "--user-dir", PACKAGE_DIR, *stock_args, "--max-update", "6", "--save-dir", fast,
            "--fused-attention", "--compile", "--compile-backend", "eager",
            "--restore-file", tmp_path / "first" / "checkpoint_last.pt"]
    out = fairseq_train(args).output
    assert "fused causal attention in 2 self-attention modules" in out
    middle = _losses(out)
    assert [float(r["num_updates"]) for r in log_records(out, "train_inner")] == [4, 5, 6]
    assert max(abs(a - b) for a, b in zip(middle, straight[3:6])) < 2e-3, (middle, straight)

    last = stock(tmp_path / "last", "9", "--restore-file", fast / "checkpoint_last.pt")
    assert max(abs(a - b) for a, b in zip(last, straight[6:])) < 2e-3, (last, straight)
    assert len(last) == 3


def test_emulated_hpu_registers_hpu_backend():
    code = ("import torch, torch._dynamo; from gpt2_hpu.device import HpuDevice; d = HpuDevice(); "
            "print(d.compile_backend in torch._dynamo.list_backends())")
    proc = run([sys.executable, "-c", code], env=emulation_env(1, "eager"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("True"), proc.output[-2000:]
    proc = run([sys.executable, "-c", code], env=emulation_env(1, "lazy"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("False"), proc.output[-2000:]


def test_compile_in_lazy_mode_gets_one_line(tiny_data, tmp_path):
    proc = run([BIN / "fairseq-train", *_plugin_args(tiny_data, tmp_path, "--hpu", "--compile", "--max-update", "3")],
               env=emulation_env(1, "lazy"))
    assert proc.returncode != 0
    assert "--compile needs eager mode, and this HPU runs in lazy mode" in proc.output

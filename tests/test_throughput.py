"""The throughput meter and MFU arithmetic (in-process, with a fake clock), and the benchmark script's
argument handling and result writing on fake runs (no training)."""
import importlib.util
import json
import os

import pytest
import torch

from gpt2_hpu.throughput import Throughput, fairseq_lm_flops_per_token, flops_per_token, peak_bf16_flops

from helpers import REPO, run


def _load_script(name):
    """A script of benchmarks/ as a module; the environment as it was (profile_fast_path sets CUPTI's variables
    for its own process at import)."""
    saved = dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / (name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


bench = _load_script("train_throughput")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# --- peaks and FLOPs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("GAUDI", 60), ("GAUDI2", 432), ("GAUDI3", 1835), ("Gaudi 3", 1835),
])
def test_peak_bf16_flops_by_reported_name(name, tflops):
    assert peak_bf16_flops(name) == tflops * 1e12


@pytest.mark.parametrize("name", ["AMD EPYC 7B13", "cpu", "", None, "NVIDIA GeForce RTX 4090"])
def test_no_peak_for_cpus_and_unlisted_devices(name):
    assert peak_bf16_flops(name) is None


def test_gpt2_small_flops_and_the_h200_anchor():
    fpt = flops_per_token(124e6, 12, 768, 1024)
    assert fpt == pytest.approx(8.6e8, rel=0.01)
    # 437k tokens/s on one H200 is about 38% MFU.
    clock = FakeClock()
    meter = Throughput(warmup_updates=1, flops_per_token=fpt, peak_flops=peak_bf16_flops("NVIDIA H200"),
                       clock=clock)
    clock.advance(30.0)
    meter.update(437_000 * 7)  # warm-up: compilation
    clock.advance(1.0)
    meter.update(437_000)
    assert meter.tokens_per_second == 437_000
    assert meter.mfu == pytest.approx(0.38, abs=0.005)


class _TiedLM(torch.nn.Module):
    """The parts of a Fairseq transformer LM that the count reads: a decoder with layers, a width, learned
    positions and an output projection tied to the token embedding."""

    def __init__(self, vocab=100, dim=8, layers=3, positions=34):
        super().__init__()
        self.decoder = torch.nn.Module()
        self.decoder.embed_dim = dim
        self.decoder.embed_tokens = torch.nn.Embedding(vocab, dim)
        self.decoder.embed_positions = torch.nn.Embedding(positions, dim)
        self.decoder.layers = torch.nn.ModuleList(torch.nn.Linear(dim, dim) for _ in range(layers))
        self.decoder.output_projection = torch.nn.Linear(dim, vocab, bias=False)
        self.decoder.output_projection.weight = self.decoder.embed_tokens.weight


def test_tied_embedding_counts_once_and_positions_not_at_all():
    model = _TiedLM(vocab=100, dim=8, layers=3)
    n = 100 * 8 + 3 * (8 * 8 + 8)
    assert fairseq_lm_flops_per_token(model, seq_len=16) == 6 * n + 12 * 3 * 8 * 16


def test_fairseq_gpt2_small_counts_as_the_architecture_says():
    # The benchmark's seed preset builds Fairseq's transformer_lm_gpt on the meta device.
    args = bench.parse_args(["--device", "cuda", "--preset", "seed"])
    d, layers, vocab = 768, 12, 50264
    per_layer = 12 * d * d + 13 * d  # q, k, v, out, fc1, fc2 with biases; two layer norms
    n = vocab * d + layers * per_layer + 2 * d  # tied embedding once, final layer norm, no position table
    assert bench.model_flops_per_token(args) == 6 * n + 12 * layers * d * 1024


# --- the meter ------------------------------------------------------------------------------------------

def test_warmup_updates_are_left_out():
    clock = FakeClock()
    meter = Throughput(warmup_updates=2, clock=clock)
    for seconds, tokens in [(50.0, 10), (5.0, 10), (1.0, 100), (1.0, 100), (2.0, 100)]:
        clock.advance(seconds)
        meter.update(tokens)
    assert (meter.counted_updates, meter.counted_tokens, meter.elapsed) == (3, 300, 4.0)
    assert meter.tokens_per_second == 75.0


def test_paused_time_is_left_out_but_only_inside_the_window():
    clock = FakeClock()
    meter = Throughput(warmup_updates=1, clock=clock)
    with meter.paused():  # before the window: irrelevant
        clock.advance(7.0)
    clock.advance(1.0)
    meter.update(10)
    clock.advance(2.0)
    with meter.paused():
        clock.advance(30.0)  # validation
        with meter.paused():
            clock.advance(5.0)  # a checkpoint inside it: counted once
    clock.advance(1.0)
    meter.update(60)
    with meter.paused():  # after the last update: not part of the window either
        clock.advance(9.0)
    assert meter.elapsed == 3.0
    assert meter.tokens_per_second == 20.0


def test_a_log_point_that_straddles_the_warmup_is_warmup_as_a_whole():
    clock = FakeClock()
    meter = Throughput(warmup_updates=5, clock=clock)
    clock.advance(10.0)
    meter.update(1000, updates=10)
    clock.advance(4.0)
    meter.update(800, updates=10)
    assert (meter.counted_updates, meter.counted_tokens, meter.tokens_per_second) == (10, 800, 200.0)


def test_without_warmup_the_window_opens_at_start():
    clock = FakeClock()
    meter = Throughput(clock=clock)
    clock.advance(3.0)
    meter.start()
    clock.advance(2.0)
    meter.update(50)
    assert meter.tokens_per_second == 25.0


def test_no_rate_before_the_window_and_no_mfu_without_a_peak():
    clock = FakeClock()
    meter = Throughput(warmup_updates=3, flops_per_token=1e9, clock=clock)
    clock.advance(1.0)
    meter.update(100)
    assert meter.tokens_per_second is None and meter.mfu is None
    for _ in range(3):
        clock.advance(1.0)
        meter.update(100)
    assert meter.tokens_per_second == 100.0
    assert meter.mfu is None  # a CPU: no peak
    meter.peak_flops = 1e12
    assert meter.mfu == pytest.approx(0.1)
    meter.n_devices = 4  # the tokens were shared by four devices
    assert meter.mfu == pytest.approx(0.025)
    assert meter.summary()["counted_tokens"] == 100


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError):
        Throughput(warmup_updates=-1)


# --- the benchmark script, on fake runs ---------------------------------------------------------------

def test_configurations_per_device_and_their_commands(tmp_path):
    cuda = bench.parse_args(["--device", "cuda", "--preset", "seed"])
    assert cuda.configs == ["stock-fp16", "plugin-fast", "plugin-fast-graphs", "plugin-fast-eager",
                            "reference"] and cuda.rounds == 1
    graphs = bench.fairseq_args("plugin-fast-graphs", cuda)
    assert graphs[graphs.index("--fast-path") + 1:graphs.index("--fast-path") + 3] == ["--compile-mode",
                                                                                        "reduce-overhead"]
    assert (cuda.updates, cuda.warmup, cuda.fast_flags) == (40, 10, ["--fast-path"])
    ref_cmd, ref_shown = bench.command("reference-nodrop", cuda)
    assert ref_cmd[1] == bench.REFERENCE_SCRIPT and ref_shown[:2] == ["python", "benchmarks/reference_gpt2.py"]
    assert ref_cmd[-4:] == ["--dropout", "0", "--attention-dropout", "0"] and "--user-dir" not in ref_cmd
    stock = bench.fairseq_args("stock-fp16-ckpt", cuda)
    fast = bench.fairseq_args("plugin-fast", cuda)
    assert "--user-dir" not in stock and {"--fp16", "--checkpoint-activations"} <= set(stock)
    assert fast[fast.index("--user-dir") + 1] == bench.PLUGIN_DIR and os.path.isdir(bench.PLUGIN_DIR)
    assert "--fast-path" in fast and "--fp16" not in fast and "--cpu" not in fast
    for flag, value in [("--tokens-per-sample", "1024"), ("--batch-size", "8"), ("--update-freq", "8"),
                        ("--max-update", "40"), ("--adam-betas", "(0.9, 0.95)"), ("--log-interval", "10")]:
        assert stock[stock.index(flag) + 1] == value

    cpu = bench.parse_args(["--device", "cpu", "--updates", "12", "--warmup", "3", "--fast-flags", "",
                            "--out", str(tmp_path / "r.json")])
    assert cpu.configs == ["stock-fp32", "plugin-fp32", "plugin-fast"] and cpu.rounds == 2
    assert bench.fairseq_args("plugin-fast", cpu) == bench.fairseq_args("plugin-fp32", cpu)
    assert "--cpu" in bench.fairseq_args("stock-fp32", cpu)

    assert cpu.log_interval == 1  # the tiny preset's
    dense = bench.parse_args(["--device", "cuda", "--preset", "seed", "--log-interval", "5"])
    args = bench.fairseq_args("plugin-fast", dense)
    assert args[args.index("--log-interval") + 1] == "5" and args.count("--log-interval") == 1

    # The host preset: GPT-2 small's 12 layers and 12 heads, the seed's update-freq, tiny widths.
    host = bench.fairseq_args("plugin-fast", bench.parse_args(["--device", "cpu", "--preset", "host"]))
    for flag, value in [("--decoder-attention-heads", "12"), ("--update-freq", "8"), ("--log-interval", "10"),
                        ("--max-update", "60")]:
        assert host[host.index(flag) + 1] == value
    assert "--decoder-layers" not in host  # transformer_lm_gpt's own 12


def test_host_malloc_keep_adds_glibc_tunables_to_every_child(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    default = bench.parse_args(["--device", "cpu"])
    assert default.host_malloc == "default"
    assert bench.child_env(default)["GLIBC_TUNABLES"] == "glibc.cpu.hwcaps=-AVX512F"
    keep = bench.child_env(bench.parse_args(["--device", "cpu", "--host-malloc", "keep"]))
    # Both thresholds together (setting one alone stops glibc adapting the other), after the user's own.
    assert keep["GLIBC_TUNABLES"] == ("glibc.cpu.hwcaps=-AVX512F:glibc.malloc.mmap_threshold=33554432:"
                                      "glibc.malloc.trim_threshold=1073741824")
    assert keep["PYTHONUNBUFFERED"] == "1"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert "GLIBC_TUNABLES" not in bench.child_env(default)


@pytest.mark.parametrize("argv", [
    ["--device", "cpu", "--warmup", "0"], ["--device", "cpu", "--updates", "5", "--warmup", "5"],
    ["--device", "cpu", "--configs", "stock-fp32,nonsense"], ["--device", "tpu"],
    ["--device", "cuda", "--preset", "seed", "--log-interval", "7"],  # 40 updates, warm-up 10: not multiples
    ["--device", "cpu", "--log-interval", "0"], ["--device", "cpu", "--host-malloc", "some"],
])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2


def test_measure_replays_the_stamped_updates():
    marks = [[10.0, 1, 64.0, 3.0], [12.0, 2, 64.0, 5.0], [12.5, 3, 64.0, 5.5], [13.5, 4, 64.0, 6.0],
             [14.0, 5, 64.0, 8.0]]
    result = bench.measure(marks, warmup=2, flops_per_token=1e6, peak_flops=1e9)
    assert (result["counted_updates"], result["counted_tokens"], result["seconds"]) == (3, 192.0, 2.0)
    assert result["tokens_per_s"] == 96.0 and result["mfu"] == pytest.approx(0.096)
    assert result["median_update_s"] == 0.5 and result["cpu_s_per_update"] == 1.0

    # A line every 2 updates (--log-interval 2): Fairseq's wpb is then the mean of the two updates.
    sparse = [[10.0, 2, 64.0, 3.0], [12.0, 4, 64.0, 5.0], [13.0, 6, 32.0, 6.0]]
    result = bench.measure(sparse, warmup=2)
    assert (result["counted_updates"], result["counted_tokens"], result["seconds"]) == (4, 192.0, 3.0)
    assert result["tokens_per_s"] == 64.0 and result["median_update_s"] == 0.75
    assert result["cpu_s_per_update"] == 0.75 and "faults_per_update" not in result

    # The children's marks: [time, num_updates, wpb, process time, loss, minor page faults so far].
    full = [[10.0, 1, 64.0, 3.0, 9.0, 500], [12.0, 2, 64.0, 5.0, 9.0, 1500], [13.0, 3, 64.0, 6.0, 9.0, 1700],
            [14.0, 4, 64.0, 7.0, 9.0, 2100]]
    assert bench.measure(full, warmup=2)["faults_per_update"] == 300  # (2100 - 1500) / 2 updates


def _fake_record(rate, ok=True, cpu_s=0.1):
    if not ok:
        return {"ok": False, "error": "exit status 1", "last_lines": ["Traceback ..."], "log": "x.log"}
    return {"ok": True, "tokens_per_s": rate, "mfu": None, "peak_mem_gb": 0.5, "counted_updates": 25,
            "seconds": 2.5, "median_update_s": 0.1, "cpu_s_per_update": cpu_s, "process_s": 30.0, "last_loss": 9.5,
            "device_name": "AMD EPYC", "torch": "2.13.0", "fairseq": "0.12.3.1", "python": "3.11.7",
            "command": "python -m fairseq_cli.train ..."}


def test_results_on_fake_runs(monkeypatch, tmp_path, capsys):
    rates = {"stock-fp32": [1000.0, 900.0], "plugin-fp32": [950.0, 990.0], "plugin-fast": [1500.0, 1400.0]}
    calls = []

    def fake_run(config, args, log_path, fpt):
        calls.append((config, os.path.basename(log_path)))
        return _fake_record(rates[config][len([c for c in calls if c[0] == config]) - 1],
                            cpu_s=0.125 if config == "plugin-fp32" else 0.1)

    monkeypatch.setattr(bench, "run_config", fake_run)
    monkeypatch.setattr(bench, "model_flops_per_token", lambda args: 2.0e6)
    out = tmp_path / "results" / "cpu.json"
    assert bench.main(["--device", "cpu", "--preset", "tiny", "--out", str(out), "--log-dir", str(tmp_path)]) == 0
    # Two rounds, the second in reverse order.
    assert [c for c, _ in calls] == ["stock-fp32", "plugin-fp32", "plugin-fast",
                                     "plugin-fast", "plugin-fp32", "stock-fp32"]
    assert calls[0][1] == "stock-fp32.round1.log"
    doc = json.loads(out.read_text())
    assert doc["device"] == "AMD EPYC" and doc["device_kind"] == "cpu" and doc["all_ok"]
    assert doc["speedup"] == 1.5 and doc["overhead"] == 0.01  # best rounds: 1500/1000 and 1 - 990/1000
    assert doc["overhead_cpu_time"] == 0.25
    assert doc["over_baseline"] == {"stock-fp32": 1.0, "plugin-fp32": 0.99, "plugin-fast": 1.5}
    assert doc["configs"]["plugin-fp32"]["rounds_tokens_per_s"] == [950.0, 990.0]
    # Round by round: 1 - 950/1000, then 1 - 990/900.
    assert doc["overhead_rounds"] == [0.05, -0.1] and doc["overhead_median_of_rounds"] == pytest.approx(-0.025)
    assert doc["flops_per_token"] == 2.0e6 and doc["torch"] == "2.13.0" and doc["fairseq"] == "0.12.3.1"
    printed = capsys.readouterr().out.splitlines()
    assert {"speedup=1.500", "overhead=+1.0%", "overhead_cpu_time=+25.0%", "overhead_median_of_rounds=-2.5%"} \
        <= set(printed)


def test_a_failed_configuration_is_recorded_and_the_exit_status_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "run_config",
                        lambda config, args, log_path, fpt: _fake_record(2000.0, ok=config != "plugin-fast"))
    monkeypatch.setattr(bench, "model_flops_per_token", lambda args: 8.55e8)
    out = tmp_path / "cuda.json"
    argv = ["--device", "cuda", "--preset", "seed", "--out", str(out), "--log-dir", str(tmp_path)]
    assert bench.main(argv) == 1
    doc = json.loads(out.read_text())
    assert doc["speedup"] is None and not doc["all_ok"] and "overhead" not in doc
    assert doc["configs"]["plugin-fast"]["ok"] is False
    printed = capsys.readouterr().out
    assert "plugin-fast FAILED (exit status 1)" in printed and "| Traceback ..." in printed
    assert "speedup=n/a" in printed


def test_the_fast_path_is_shown_as_a_share_of_the_reference(monkeypatch, tmp_path, capsys):
    rates = {"stock-fp16": 1000.0, "plugin-fast": 1500.0, "reference": 2000.0}
    monkeypatch.setattr(bench, "run_config", lambda config, args, log_path, fpt: _fake_record(rates[config]))
    monkeypatch.setattr(bench, "model_flops_per_token", lambda args: 8.55e8)
    out = tmp_path / "cuda.json"
    assert bench.main(["--device", "cuda", "--preset", "seed", "--configs", "stock-fp16,plugin-fast,reference",
                       "--out", str(out), "--log-dir", str(tmp_path)]) == 0
    doc = json.loads(out.read_text())
    assert doc["speedup"] == 1.5 and doc["fast_over_reference"] == 0.75 and doc["over_baseline"]["reference"] == 2.0
    assert "fast_over_reference=0.750" in capsys.readouterr().out.splitlines()


# --- the plain-PyTorch reference ------------------------------------------------------------------------

def test_the_reference_computes_fairseqs_loss_with_fairseqs_parameters():
    # The reference measures the fast path's kernels without a framework only if it is the same model: Fairseq's
    # transformer_lm_gpt at the host preset's widths, its parameters loaded, gives the same summed loss and
    # the same gradients (fp32, dropout off).
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    ref = _load_script("reference_gpt2")
    argv = bench.fairseq_args("reference", bench.parse_args(["--device", "cpu", "--preset", "host"]))
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    fairseq_model = task.build_model(cfg.model).eval()
    a = ref.parse_args(argv)
    assert ref.vocabulary_size(a.dict_size) == len(task.source_dictionary)
    model = ref.build_model(a).eval()
    ref.load_fairseq_decoder(model, fairseq_model.state_dict())
    assert len(model.blocks) == 12 and sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in fairseq_model.parameters())

    seq = torch.cat([task.dummy_src, task.dummy_tgt[-1:]]).expand(2, -1)
    tokens, target = seq[:, :-1], seq[:, 1:]
    logits, _ = fairseq_model(tokens)
    theirs = -torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).sum()
    ours = model(tokens, target)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    theirs.backward()
    ours.backward()
    assert torch.allclose(model.tokens.weight.grad, fairseq_model.decoder.embed_tokens.weight.grad, atol=1e-5)
    assert torch.allclose(model.blocks[5].qkv.weight.grad[-a.decoder_embed_dim:],
                          fairseq_model.decoder.layers[5].self_attn.v_proj.weight.grad, atol=1e-5)


def test_the_reference_trains_and_reports_like_a_fairseq_child():
    # Uncompiled, at the tiny preset, for 3 updates: its log lines and result line are what run_config reads.
    args = bench.parse_args(["--device", "cpu", "--preset", "tiny", "--updates", "3", "--warmup", "1"])
    cmd, shown = bench.command("reference", args)
    assert shown[:2] == ["python", "benchmarks/reference_gpt2.py"] and "--cpu" in cmd
    proc = run(cmd + ["--no-compile"], timeout=120)
    assert proc.returncode == 0, proc.output[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(bench.RESULT_TAG))
    child = json.loads(line[len(bench.RESULT_TAG):])
    assert child["plugin_loaded"] is False and child["compiled"] is False and child["peak_mem_bytes"] > 0
    tokens = 8 * 64 * 2  # the tiny preset: batch 8 x 64 tokens, update-freq 2
    assert [m[1] for m in child["marks"]] == [1, 2, 3] and {m[2] for m in child["marks"]} == {tokens}
    assert all(8 < m[4] < 16 for m in child["marks"])  # base-2 loss near log2(4,096 words) at the start
    summary = bench.measure(child["marks"], warmup=1)
    assert summary["counted_updates"] == 2 and summary["tokens_per_s"] > 0
    # The child reports the tunables it started with: here, whatever this environment has.
    assert child["glibc_tunables"] == os.environ.get("GLIBC_TUNABLES") and summary["faults_per_update"] >= 0


def test_host_malloc_keep_reaches_the_child_and_takes_its_page_faults_away(monkeypatch):
    # The eager reference allocates each intermediate anew: under glibc's defaults every update faults in
    # thousands of fresh pages (6,000 to 13,000 at the tiny preset); with the tunables of --host-malloc keep, read
    # by glibc as the child starts, freed memory is reused, and pages are faulted in only as the heap grows (none
    # in most updates, a few thousand in some of the first).
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    faults = {}
    for setting in ("default", "keep"):
        args = bench.parse_args(["--device", "cpu", "--preset", "tiny", "--updates", "8", "--warmup", "4",
                                 "--host-malloc", setting])
        cmd, _ = bench.command("reference", args)
        proc = run(cmd + ["--no-compile"], env=bench.child_env(args), timeout=120)
        assert proc.returncode == 0, proc.output[-3000:]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(bench.RESULT_TAG))
        child = json.loads(line[len(bench.RESULT_TAG):])
        assert (child["glibc_tunables"] or "") == ":".join(bench.HOST_MALLOC[setting])
        faults[setting] = bench.measure(child["marks"], warmup=4)["faults_per_update"]
    assert faults["default"] > 2000 and faults["keep"] < faults["default"] / 4, faults


# --- the profile's device timeline -------------------------------------------------------------------------

class _Event:
    def __init__(self, name, start, end, device="CPU", annotation=False, thread=1):
        self.name, self.thread, self.is_user_annotation = name, thread, annotation
        self.time_range = type("Interval", (), {"start": start, "end": end})()
        self.device_type = "DeviceType." + device


def test_the_device_timeline_finds_idle_gaps_and_what_the_host_was_doing():
    profile = _load_script("profile_fast_path")
    events = [
        _Event("train_step-13", 0, 1000, annotation=True), _Event("forward", 0, 300, annotation=True),
        _Event("backward", 300, 700, annotation=True), _Event("optimizer", 800, 900, annotation=True),
        _Event("forward", 0, 1000, annotation=True, thread=2),  # another thread's range: not the update's
        _Event("aten::mm", 10, 20),  # host ops are not device time
        _Event("forward", 50, 350, device="CUDA"),  # a range's device-side copy, unflagged
        _Event("train_step-13", 40, 990, device="CUDA", annotation=True),
        _Event("mm_kernel", 100, 200, device="CUDA"), _Event("gelu", 150, 250, device="CUDA"),  # overlap
        _Event("bwd_kernel", 400, 600, device="CUDA"),  # idle 250-400, midpoint 325: backward
        _Event("adam", 850, 870, device="CUDA"),  # idle 600-850, midpoint 725: train_step-13 alone
    ]
    timeline = profile.device_timeline(events)
    assert timeline["busy_us"] == 150 + 200 + 20 and (timeline["first"], timeline["last"]) == (100, 870)
    assert timeline["gaps"] == [(250, 400, "bwd_kernel", "backward"), (600, 850, "adam", "train_step-13")]
    report = profile.timeline_report(timeline, wall_s=0.001)
    assert report[0].startswith("device timeline: busy 0.000 s of 0.001 s wall (37%)") and "in 2 gaps" in report[0]
    assert any(line.split()[:3] == ["train_step-13", "0.25", "ms"] for line in report)
    assert profile.timeline_report(profile.device_timeline(events[:6]), 1.0) == [
        "device timeline: no device events (a CPU run)"]

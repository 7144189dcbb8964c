"""The HPU emulation behaves like the documented habana_frameworks API that gpt2_hpu calls.

Each check runs in a fresh interpreter: Habana's bridge reads PT_HPU_LAZY_MODE once, at import.
"""
import subprocess
import sys
import textwrap

import pytest

from helpers import emulation_env


def _python(code, devices=2, mode="lazy", **env):
    # What gpt2_hpu.device does when GPT2_HPU_EMULATE is set: put the stand-ins on sys.path.
    code = "from gpt2_hpu import emulation\nif emulation.requested_device_count():\n    emulation.install()\n" \
        + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=emulation_env(devices, mode, **env), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_device_object_answers_the_device_questions():
    _python("""
        import torch
        from gpt2_hpu.device import HpuDevice
        d = HpuDevice()
        assert d.emulated and d.is_available() and d.device_count() == 2 and d.lazy
        assert d.torch_device.type != "cpu" and d.ddp_device_ids() is None
        assert torch.zeros(2, device=d.torch_device).device == d.torch_device
        assert d.distributed_backend == "hccl" and d.name() == "GAUDI2"
        d.mark_step(); d.mark_step(); d.synchronize()
        import habana_frameworks.torch.core.step_closure as sc
        assert d.mark_steps == 2 and sc.emulator_stats["mark_step"] == 3  # synchronize flushes the graph too
        assert d.memory_allocated() > 0 and d.max_memory_allocated() >= d.memory_allocated()
    """)


def test_lazy_mode_is_read_once_and_eager_mark_step_is_a_silent_no_op():
    proc = _python("""
        import os
        import habana_frameworks.torch.core as htcore
        from habana_frameworks.torch.core.step_closure import emulator_stats
        from habana_frameworks.torch.utils.internal import is_lazy
        assert not is_lazy() and not htcore.is_lazy()
        os.environ["PT_HPU_LAZY_MODE"] = "1"
        assert not is_lazy()  # cached at first read, as in the bridge
        assert htcore.mark_step("hpu", sync=True) is None and htcore.mark_step() is None
        htcore.add_step_closure(lambda: 1 / 0)  # dropped in eager mode
        assert emulator_stats["mark_step"] == 0
        from gpt2_hpu.device import HpuDevice
        d = HpuDevice(); d.mark_step()
        assert not d.lazy and d.mark_steps == 0
    """, mode="eager")
    assert "It's lazy mode only functionality" in proc.stderr


def test_lazy_mark_step_runs_step_closures():
    _python("""
        import habana_frameworks.torch.core as htcore
        ran = []
        htcore.add_step_closure(ran.append, args=(7,))
        assert ran == []
        htcore.mark_step()
        assert ran == [7]
    """)


def test_hpu_module_memory_and_random():
    _python("""
        import torch
        import habana_frameworks.torch.core
        import habana_frameworks.torch.hpu as hthpu
        assert torch.hpu is hthpu
        stats = hthpu.memory_stats()
        assert list(stats) == ["Limit", "InUse", "MaxInUse", "NumAllocs", "NumFrees", "ActiveAllocs",
                               "MaxAllocSize", "TotalSystemAllocs", "TotalSystemFrees", "TotalActiveAllocs"]
        assert all(isinstance(v, int) for v in stats.values())
        assert hthpu.memory_reserved() == hthpu.max_memory_reserved() == stats["Limit"]
        free, total = hthpu.mem_get_info()
        assert total == stats["Limit"] and 0 < free < total
        try:
            hthpu.memory_stats(1)
            raise SystemExit("device 1 accepted")
        except AssertionError as e:
            assert "Invalid device id" in str(e)
        try:
            hthpu.get_rng_state(1)
            raise SystemExit("rng device 1 accepted")
        except RuntimeError:
            pass
        torch.manual_seed(1234)  # the bridge makes this seed the HPU generator too
        assert hthpu.random.initial_seed() == 1234
        state = hthpu.get_rng_state()
        assert state.dtype == torch.uint8 and state.device.type == "cpu"
        assert len(hthpu.get_rng_state_all()) == 1
        from habana_frameworks.torch.hpu.metrics import metric_global
        assert dict(metric_global("graph_compilation").stats())["TotalNumber"] == 0
        assert metric_global("no_such_metric") is None
        try:
            hthpu.set_device(3)
            raise SystemExit("set_device(3) accepted")
        except AssertionError:
            pass
    """)


def test_hccl_initialisation_and_backend():
    _python("""
        import os, tempfile
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ID", "HLS_MODULE_ID"):
            os.environ.pop(k, None)
        import torch, torch.distributed as dist
        from habana_frameworks.torch.distributed.hccl import initialize_distributed_hpu
        # the import itself ran initialize_distributed_hpu(): launcher defaults are in the environment
        assert os.environ["MASTER_ADDR"] == "localhost" and os.environ["MASTER_PORT"] == "12345"
        assert initialize_distributed_hpu() == (1, -1, -1)
        assert initialize_distributed_hpu(world_size=4, rank=2, local_rank=0) == (4, 2, 0)
        assert os.environ["ID"] == "2" and os.environ["HLS_MODULE_ID"] == "0"
        os.environ["OMPI_COMM_WORLD_SIZE"], os.environ["OMPI_COMM_WORLD_RANK"] = "8", "5"
        os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] = "1"
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(k)
        assert initialize_distributed_hpu() == (8, 5, 1)
        assert "hccl" in dist.Backend.backend_list
        store = dist.FileStore(tempfile.mktemp(), 1)
        dist.init_process_group("hccl", store=store, rank=0, world_size=1)
        from gpt2_hpu.emulation import DEVICE
        t = torch.ones(3, device=DEVICE)
        dist.all_reduce(t)
        assert dist.get_backend() == "hccl" and t.cpu().tolist() == [1.0, 1.0, 1.0]
        gathered = [None]
        dist.all_gather_object(gathered, {"rank": 0})  # object collectives stage their bytes on the HPU
        assert gathered == [{"rank": 0}]
        for host_call in (lambda: dist.all_reduce(torch.ones(3)), lambda: dist.broadcast(torch.ones(3), 0)):
            try:
                host_call()
                raise SystemExit("hccl accepted a host tensor")
            except RuntimeError as e:
                assert "expected HPU tensors, got a tensor on cpu" in str(e)
        for op_call in (lambda: dist.all_reduce(t, op=dist.ReduceOp.AVG),
                        lambda: dist.reduce(t, 0, op=dist.ReduceOp.AVG)):
            try:
                op_call()
                raise SystemExit("AVG accepted")
            except RuntimeError as e:
                assert "Unsupported ReduceOp for HCCL process group: AVG" in str(e), e
        big = torch.tensor([2 ** 25 + 1], dtype=torch.int64, device=DEVICE)
        dist.all_reduce(big)  # hccl reduces integers through float32
        assert big.cpu().tolist() == [2 ** 25]
    """)


@pytest.mark.parametrize("mode", ["lazy", "eager"])
def test_fused_adamw_follows_habanas_update_rule(mode):
    _python("""
        import math, torch
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5))
        ref = w.detach().clone()
        opt = FusedAdamW([w], lr=0.1, weight_decay=0.1)
        assert opt.defaults["eps"] == 1e-6 and opt.defaults["bias_correction"] is True
        m = torch.zeros(5); v = torch.zeros(5)
        for t in range(1, 4):
            g = torch.randn(5)
            w.grad = g.clone()
            opt.step()
            m = 0.9 * m + 0.1 * g; v = 0.999 * v + 0.001 * g * g
            step = 0.1 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            ref = ref * (1 - 0.1 * 0.1) - step * m / (v.sqrt() + 1e-6)
        assert torch.allclose(w.detach(), ref, atol=1e-6), (w, ref)
        assert opt.param_groups[0]["step"] == 3 and opt.state[w]["step"] == 0
        try:
            FusedAdamW([w], lr=-1)
            raise SystemExit("negative lr accepted")
        except ValueError:
            pass
    """, mode=mode)


def test_fused_clip_norm_shapes_and_strict_clipping():
    _python("""
        import torch
        from habana_frameworks.torch.hpex.normalization import FusedClipNorm
        from gpt2_hpu.emulation import DEVICE
        a = torch.nn.Parameter(torch.zeros(3, device=DEVICE)); b = torch.nn.Parameter(torch.zeros(4, device=DEVICE))
        clip = FusedClipNorm([a, b], max_norm=1.0)
        none = clip.clip_norm([a, b])
        assert none.dim() == 0 and none.item() == 0.0 and none.device.type == "cpu"  # no grads: a CPU 0-d zero
        a.grad = torch.full((3,), 3.0, device=DEVICE); b.grad = torch.full((4,), 2.0, device=DEVICE)
        total = clip.clip_norm([a, b])
        assert total.shape == (1,) and total.device == DEVICE and abs(total.item() - (27 + 16) ** 0.5) < 1e-5
        after = torch.cat([a.grad, b.grad]).norm().item()
        assert abs(after - 1.0) < 1e-4
        small = clip.clip_norm([a, b])  # now <= max_norm: left alone
        assert torch.allclose(torch.cat([a.grad, b.grad]).norm(), torch.tensor(after))
    """)


def test_fused_sdpa_matches_torch_and_rejects_inference_only_options():
    _python("""
        import torch, torch.nn.functional as F
        from habana_frameworks.torch.hpex.kernels import FusedSDPA
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 4, 8, 16, requires_grad=True) for _ in range(3))
        out = FusedSDPA.apply(q, k, v, None, 0.0, True, None, "None", None)
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
        out.sum().backward()
        assert q.grad is not None
        kv = torch.randn(2, 2, 8, 16)
        gqa = FusedSDPA.apply(q.detach(), kv, kv, None, 0.0, False)  # GQA detected from the head counts
        assert gqa.shape == (2, 4, 8, 16)
        try:
            FusedSDPA.apply(q, k, v, None, 0.0, True, None, "None", None, torch.tensor([8, 8], dtype=torch.int32))
            raise SystemExit("valid_seq_len accepted in training")
        except AssertionError:
            pass
    """)


def test_without_habana_the_device_says_how_to_emulate():
    _python("""
        from gpt2_hpu.device import HabanaUnavailable, HpuDevice
        try:
            HpuDevice()
            raise SystemExit("no error")
        except HabanaUnavailable as e:
            assert "GPT2_HPU_EMULATE" in str(e)
    """, devices=0, mode=None)


def test_emulated_hpu_is_a_device_of_its_own():
    _python("""
        import torch
        import torch.nn.functional as F
        from gpt2_hpu.device import HpuDevice
        d = HpuDevice()
        dev = d.torch_device
        host = torch.arange(6.0).reshape(2, 3)
        x = host.to(dev)
        assert x.device == dev and x.device != host.device
        for made in (torch.zeros(2, device=dev), torch.arange(3, device=dev), torch.randn(2, device=dev),
                     torch.tensor([1.0], device=dev), x.new_zeros(2), torch.ones_like(x), x[0], x.t(), x * 2):
            assert made.device == dev, made
        assert torch.equal(x.cpu(), host) and (x * 2).cpu().tolist() == [[0, 2, 4], [6, 8, 10]]
        assert (x + torch.tensor(1.0)).device == dev  # a 0-dim host tensor is a scalar, as on every accelerator
        for mixed in (lambda: x + host, lambda: F.embedding(torch.tensor([[0, 1]]), x),
                      lambda: torch.nn.Linear(3, 2).to(dev)(host)):
            try:
                mixed()
                raise SystemExit("a host tensor was accepted in an HPU op")
            except RuntimeError as e:
                assert "found at least two devices, hpu:0 and cpu!" in str(e), e
        y = x.clone(); y.copy_(host); host.copy_(x)  # copies cross devices, both ways
        model = torch.nn.Linear(3, 2).to(dev)
        model(x).sum().backward()
        assert model.weight.grad.device == dev
        try:
            x.numpy()
            raise SystemExit("numpy() of an HPU tensor")
        except (TypeError, RuntimeError):
            pass
    """)


def test_random_ops_on_the_hpu_draw_from_the_hpu_generator():
    _python("""
        import torch
        import torch.nn.functional as F
        from gpt2_hpu.device import HpuDevice
        d = HpuDevice()
        x = torch.ones(1000, device=d.torch_device)
        torch.manual_seed(7)  # seeds both generators, as the bridge's wrapper does
        cpu_state, hpu_state = torch.get_rng_state(), d.get_rng_state()
        first = F.dropout(x, 0.5, training=True).cpu()
        assert torch.equal(torch.get_rng_state(), cpu_state)  # the CPU generator was not used
        assert not torch.equal(d.get_rng_state(), hpu_state)
        d.set_rng_state(hpu_state)
        torch.manual_seed(99)  # moving the CPU generator does not change what the HPU draws next
        d.set_rng_state(hpu_state)
        assert torch.equal(F.dropout(x, 0.5, training=True).cpu(), first)
        assert torch.randn(3, device=d.torch_device).device == d.torch_device
    """)


def test_save_and_load_go_through_the_host():
    _python("""
        import io, torch
        from gpt2_hpu.device import HpuDevice
        d = HpuDevice()
        buffer = io.BytesIO()
        torch.save({"w": torch.ones(2, device=d.torch_device)}, buffer)
        buffer.seek(0)
        assert torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu")["w"].device.type == "cpu"
        back = torch.load(io.BytesIO(buffer.getvalue()), map_location=d.torch_device)["w"]
        assert back.device == d.torch_device and back.cpu().tolist() == [1.0, 1.0]
    """)


@pytest.mark.parametrize("release,lazy", [("1.19", True), ("1.20", True), ("1.21", False), (None, False)])
def test_the_lazy_default_follows_the_emulated_release(release, lazy):
    env = {"GPT2_HPU_EMULATE_RELEASE": release} if release else {}
    _python(f"""
        import os
        assert "PT_HPU_LAZY_MODE" not in os.environ
        from gpt2_hpu.device import HpuDevice
        assert HpuDevice().lazy is {lazy}
    """, mode=None, **env)

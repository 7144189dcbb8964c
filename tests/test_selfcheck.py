"""`gpt2-hpu-selfcheck` on emulated HPUs: all PASS on 2 cards; a broken collective, a hung one and a 1-card
host each end as one row with its cause.

Breakages are real ones, made from outside: a `sitecustomize` on PYTHONPATH changes torch.distributed in every
child process the selfcheck starts, exactly as a faulty collective library would.
"""
import os
import re
import sys
import time

from helpers import BIN, emulation_env, run

SELFCHECK = BIN / "gpt2-hpu-selfcheck"
ALL_CHECKS = ["versions", "cards", "mode", "mark-step-lazy", "mark-step-eager", "hccl", "train-lazy",
              "train-eager", "dropout-checkpoint", "zero1-checkpoint", "memory"]

# A collective that returns without reducing anything.
NO_OP_ALL_REDUCE = """
import torch.distributed

def all_reduce(tensor, *args, **kwargs):
    return None

torch.distributed.all_reduce = all_reduce
"""

# A collective that never returns; every process that loads it leaves its pid next to this file.
HANGING_ALL_GATHER = """
import os
import time
import torch.distributed

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pids"), "a") as f:
    f.write(str(os.getpid()) + "\\n")

def all_gather(*args, **kwargs):
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hanging"), "a").close()
    time.sleep(3600)

torch.distributed.all_gather = all_gather
"""


def _rows(stdout):
    """{check: (result, detail)} from the printed table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"check\s+\| result \| detail$", line))
    rows = {}
    for line in lines[start + 2:]:
        parts = [p.strip() for p in line.split(" | ", 2)]
        if len(parts) != 3:
            break
        rows[parts[0]] = (parts[1], parts[2])
    return rows


def _env_with_sitecustomize(folder, source, devices=2):
    (folder / "sitecustomize.py").write_text(source)
    path = [str(folder)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return emulation_env(devices, None, PYTHONPATH=os.pathsep.join(path))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_every_check_passes_on_two_emulated_hpus():
    start = time.monotonic()
    proc = run([SELFCHECK], env=emulation_env(2, None), timeout=900)
    print(proc.stdout)
    print(f"selfcheck took {time.monotonic() - start:.0f} s")
    rows = _rows(proc.stdout)
    assert list(rows) == ALL_CHECKS, proc.output[-3000:]
    assert {name: r for name, r in rows.items() if r[0] != "PASS"} == {}
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1].startswith("11 checks: 11 PASS, 0 FAIL, 0 SKIP in ")
    assert rows["cards"][1] == "2 x GAUDI2"
    assert "2 spawned ranks" in rows["hccl"][1]


def test_a_no_op_all_reduce_fails_the_hccl_check_with_its_cause(tmp_path):
    proc = run([SELFCHECK, "--only", "hccl"], env=_env_with_sitecustomize(tmp_path, NO_OP_ALL_REDUCE), timeout=300)
    print(proc.stdout)
    assert proc.returncode == 1
    rows = _rows(proc.stdout)
    assert list(rows) == ["hccl"] and rows["hccl"][0] == "FAIL"
    assert re.fullmatch(r"hccl on 2 ranks: rank [01]: all_reduce SUM of 1\.\.2 gave [12]\.0, expected 3\.0",
                        rows["hccl"][1]), rows
    assert proc.stdout.splitlines()[-1].startswith("1 checks: 0 PASS, 1 FAIL, 0 SKIP")


def test_a_hung_collective_is_a_fail_and_leaves_no_process(tmp_path):
    start = time.monotonic()
    # cards first: the device probe then runs in that check's time, and hccl has its 30 s to itself.
    proc = run([SELFCHECK, "--only", "cards,hccl", "--timeout", "30"],
               env=_env_with_sitecustomize(tmp_path, HANGING_ALL_GATHER), timeout=300)
    took = time.monotonic() - start
    print(proc.stdout, f"took {took:.0f} s")
    assert proc.returncode == 1 and took < 90
    assert _rows(proc.stdout)["hccl"] == \
        ("FAIL", "hccl on 2 ranks: no result within the check's 30 s (--timeout); hung? stopped it")
    assert (tmp_path / "hanging").exists()
    # The selfcheck, its two probes and the two ranks loaded the hanging collective; none of them is left.
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) >= 5
    deadline = time.monotonic() + 10
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p for p in pids if _alive(p)] == []


def test_one_card_skips_the_zero1_check():
    proc = run([SELFCHECK, "--only", "cards,zero1-checkpoint"], env=emulation_env(1, None), timeout=300)
    assert proc.returncode == 0, proc.output[-3000:]
    assert _rows(proc.stdout) == {"cards": ("PASS", "1 x GAUDI2"),
                                  "zero1-checkpoint": ("SKIP", "needs 2 cards, found 1")}


def test_an_unknown_check_name_is_a_usage_error():
    proc = run([SELFCHECK, "--only", "hccl,warp-drive"], env=emulation_env(2, None))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown check warp-drive: choose from versions, cards, mode" in proc.stderr


def test_the_cause_is_the_last_error_line_not_the_traceback():
    from gpt2_hpu.selfcheck.children import last_error_line

    spawned = """Traceback (most recent call last):
  File "<string>", line 1, in <module>
torch.multiprocessing.spawn.ProcessRaisedException:

-- Process 1 terminated with the following error:
Traceback (most recent call last):
  File "x.py", line 3, in _wrap
    fn(i, *args)
gpt2_hpu.selfcheck.probes.CheckFailed: rank 1: all_gather slot 0 holds [0.0], expected [1.0]

[W1128 03:00:00.000 ProcessGroup.cpp:1] Warning: destroy_process_group() was not called
"""
    assert last_error_line(spawned) == "rank 1: all_gather slot 0 holds [0.0], expected [1.0]"
    assert last_error_line("loading\ngpt2-hpu: error: --distributed-world-size 4 asks for 4 HPUs\n") == \
        "gpt2-hpu: error: --distributed-world-size 4 asks for 4 HPUs"
    assert last_error_line("a\nRuntimeError: synStatus 26 [Device already acquired]\n  \n") == \
        "RuntimeError: synStatus 26 [Device already acquired]"
    assert last_error_line("torch.distributed.DistBackendError: timed out\n") == "DistBackendError: timed out"


def test_the_command_itself_loads_neither_torch_nor_habana():
    """On a Gaudi, the bridge in the parent could hold a card that a check's child then cannot acquire."""
    probe = ("import sys; from gpt2_hpu.selfcheck import command, checks; "
             "print(sorted(m for m in ('torch', 'fairseq', 'habana_frameworks') if m in sys.modules))")
    proc = run([sys.executable, "-c", probe], env=emulation_env(2, None))
    assert proc.returncode == 0 and proc.stdout.split() == ["[]"], proc.output

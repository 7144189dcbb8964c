"""How a training process takes SIGTERM and SIGINT (gpt2_hpu/preemption.py), in a small process of its own: the
end-to-end runs are in tests/test_preemption.py."""
import subprocess
import sys

from helpers import repo_env

SCRIPT = """
import multiprocessing, os, signal, time
from gpt2_hpu import preemption

class OneRank:
    data_parallel_world_size = 1

preemption.install()
assert preemption.agreed_signal(OneRank()) is None
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(2.0,))  # a data loader worker
worker.start()
time.sleep(0.5)  # it is asleep by now
os.kill(worker.pid, signal.SIGINT)
os.kill(worker.pid, signal.SIGTERM)
os.kill(os.getpid(), signal.SIGINT)
os.kill(os.getpid(), signal.SIGINT)  # the same delivery again (direct, and forwarded by the launcher): silent
os.kill(os.getpid(), signal.SIGTERM)  # another signal: ignored, said once
time.sleep(1.5)
os.kill(os.getpid(), signal.SIGINT)  # SIGINT again, later: ignored, said once
worker.join()
print(preemption.agreed_signal(OneRank()), worker.exitcode)
"""


def test_signals_are_noted_once_and_forked_workers_live_on():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=repo_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SIGINT", "0"]  # the first signal decides; the worker ended on its own
    assert proc.stderr.splitlines() == [
        f"gpt2-hpu: {name} received while stopping: ignored, training stops at the next update boundary "
        "(SIGKILL stops it at once)" for name in ("SIGTERM", "SIGINT")]

"""fairseq-eval-lm with --hpu: the models and batches go to the active HPU, a mark_step follows each batch;
without an active HPU Fairseq's evaluation is called untouched. And every console script names a function."""
import importlib

from gpt2_hpu import device, evaluation

from helpers import REPO

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


class FakeHpu:
    lazy = True
    torch_device = "hpu-under-test"

    def __init__(self, events):
        self.events = events
        self.mark_steps = 0

    def mark_step(self):
        self.events.append("mark_step")
        self.mark_steps += 1


class FakeModel:
    moved_to = None

    def to(self, where):
        self.moved_to = where
        return self


def fairseq_like_eval_lm(events):
    """A function of fairseq_cli.eval_lm.eval_lm's signature: consumes every batch, reports what it was given."""

    def eval_lm(models, source_dictionary, batch_iterator, post_process=None, device=None):
        seen = []
        for batch in batch_iterator:
            seen.append(batch)
            events.append(f"scored {batch}")
        return {"device": device, "batches": seen, "models": [m.moved_to for m in models]}

    return eval_lm


def test_with_an_active_hpu_models_and_batches_go_there_and_each_batch_is_its_own_graph(monkeypatch):
    events = []
    monkeypatch.setattr(device, "_device", FakeHpu(events))
    run = evaluation.on_device(fairseq_like_eval_lm(events))
    result = run(models=[FakeModel()], source_dictionary=None, batch_iterator=iter(["a", "b", "c"]))
    assert result == {"device": "hpu-under-test", "batches": ["a", "b", "c"], "models": ["hpu-under-test"]}
    assert events == ["scored a", "mark_step", "scored b", "mark_step", "scored c", "mark_step"]


def test_without_an_active_hpu_fairseqs_evaluation_runs_untouched(monkeypatch):
    events = []
    monkeypatch.setattr(device, "_device", None)
    run = evaluation.on_device(fairseq_like_eval_lm(events))
    result = run([FakeModel()], None, iter(["a"]), device="cuda:0")
    assert result == {"device": "cuda:0", "batches": ["a"], "models": [None]}
    assert events == ["scored a"]


def test_every_console_script_names_a_function():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"gpt2-hpu-eval-lm", "gpt2-hpu-sample"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_a_fairseq_command_run_as_main_is_adapted_in_that_copy_too(monkeypatch):
    import sys
    import types

    import fairseq_cli.eval_lm

    from gpt2_hpu import adaptations

    run_as_main = types.ModuleType("__main__")  # `python -m fairseq_cli.eval_lm`: the file again, as __main__
    run_as_main.__file__ = fairseq_cli.eval_lm.__file__
    monkeypatch.setitem(sys.modules, "__main__", run_as_main)
    assert adaptations._and_main_copy(fairseq_cli.eval_lm) == [fairseq_cli.eval_lm, run_as_main]
    console_script = types.ModuleType("__main__")  # `fairseq-eval-lm`: a script that imports the module
    console_script.__file__ = __file__
    monkeypatch.setitem(sys.modules, "__main__", console_script)
    assert adaptations._and_main_copy(fairseq_cli.eval_lm) == [fairseq_cli.eval_lm]

"""Fairseq's two walks over every module, done once per update instead of once per micro-batch.

Fairseq's `FairseqTask.train_step` starts every micro-batch with `model.train()` and
`model.set_num_updates(update_num)`. Each call visits every module of the model (about 160 for GPT-2 small) in
Python, about 0.3 ms each on a 2-core host: 5 ms of host work per update at update-freq 8, for calls that change
nothing after the first of the update. On a GPU or an HPU that host work is time the device waits for.

`once_per_update(model)` is a context around one update: during it the first `train(mode)` and the first
`set_num_updates(n)` run as Fairseq's do; a repeat with the same argument returns at once, and any other
argument (an `eval()` in between, another update number) runs in full again. The shortcuts are instance
attributes on the model object Fairseq's task receives, removed when the update ends, so the model's class,
its `eval()` and every other caller outside an update are untouched. A deep copy made during an update would
keep them (closures over this model): the trainer sets them aside while Fairseq builds its EMA copy.

Every `set_num_updates` of Fairseq's own models and modules only stores the number (or a value computed from
it), so a repeat within an update changes nothing; a model whose `set_num_updates` acts at every call (the
data2vec examples step their teacher) would act once per update here.
"""
import contextlib


@contextlib.contextmanager
def once_per_update(model):
    done = {}
    shortcuts = {"train": _train_once(model, done)}
    set_num_updates = getattr(model, "set_num_updates", None)
    if callable(set_num_updates):
        shortcuts["set_num_updates"] = _set_num_updates_once(set_num_updates, done)
    for shortcut in shortcuts.values():
        shortcut.module_walks_shortcut = True
    if any(name in vars(model) for name in shortcuts):  # nested in another: the outer one's shortcuts stay
        yield
        return
    vars(model).update(shortcuts)
    try:
        yield
    finally:
        for name in shortcuts:
            vars(model).pop(name, None)


def _train_once(model, done):
    class_train = type(model).train

    def train(mode=True):
        if "train" not in done or done["train"] != mode:
            class_train(model, mode)  # refuses a mode that is not a bool, as torch does
            done["train"] = mode
        return model

    return train


def _set_num_updates_once(set_num_updates, done):
    def once(num_updates):
        if "num_updates" not in done or done["num_updates"] != num_updates:
            set_num_updates(num_updates)
            done["num_updates"] = num_updates

    return once


@contextlib.contextmanager
def set_aside(model):
    """The update's shortcuts off `model` for the length of the block (a deep copy of the model is made in it)."""
    kept = {name: value for name, value in vars(model).items() if getattr(value, "module_walks_shortcut", False)}
    for name in kept:
        del vars(model)[name]
    try:
        yield
    finally:
        vars(model).update(kept)

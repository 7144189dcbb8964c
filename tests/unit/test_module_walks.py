"""module_walks.once_per_update: within one update a repeated `train()` or `set_num_updates(n)` walks no
modules, any other call walks them as Fairseq's does, and outside the update the model is untouched."""
import torch

from gpt2_hpu.module_walks import once_per_update


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1), torch.nn.Linear(2, 2))
        self.walks = {"train": 0, "set_num_updates": 0}
        self.num_updates = None

    def train(self, mode=True):
        self.walks["train"] += 1
        return super().train(mode)

    def set_num_updates(self, num_updates):
        self.walks["set_num_updates"] += 1
        self.num_updates = num_updates


def _modes(model):
    return [m.training for m in model.modules()]


def test_repeats_within_an_update_walk_nothing():
    model = Model().eval()
    model.walks["train"] = 0
    with once_per_update(model):
        for _ in range(8):  # a micro-batch each: Fairseq's task calls both every time
            assert model.train() is model
            model.set_num_updates(5)
        assert model.walks == {"train": 1, "set_num_updates": 1}
        assert _modes(model) == [True] * 5 and model.num_updates == 5


def test_other_calls_within_an_update_walk_in_full():
    model = Model()
    with once_per_update(model):
        model.train()
        model.eval()  # Module.eval calls self.train(False): the shortcut sees it
        assert _modes(model) == [False] * 5
        model.train()
        assert _modes(model) == [True] * 5
        model.set_num_updates(5)
        model.set_num_updates(6)
        assert model.num_updates == 6
        assert model.walks == {"train": 3, "set_num_updates": 2}


def test_outside_an_update_the_model_is_its_class_own():
    model = Model()
    state = dict(model.state_dict())
    with once_per_update(model):
        model.train()
        with once_per_update(model):  # re-entered: the outer shortcuts stay
            model.train()
        assert model.walks["train"] == 1 and "train" in vars(model)
    assert "train" not in vars(model) and "set_num_updates" not in vars(model)
    model.train()
    model.set_num_updates(7)
    assert model.walks == {"train": 2, "set_num_updates": 1}
    assert model.state_dict().keys() == state.keys()


def test_a_model_without_set_num_updates_gets_only_the_train_shortcut():
    model = torch.nn.Linear(2, 2)
    with once_per_update(model):
        assert set(vars(model)) >= {"train"} and "set_num_updates" not in vars(model)
    assert "train" not in vars(model)


def test_a_copy_made_aside_has_no_shortcuts():
    import copy

    from gpt2_hpu.module_walks import set_aside

    model = Model()
    with once_per_update(model):
        with set_aside(model):
            twin = copy.deepcopy(model)
        assert "train" in vars(model) and "set_num_updates" in vars(model)
        leaked = copy.deepcopy(model)
    assert "train" not in vars(twin) and "set_num_updates" not in vars(twin)
    # What set_aside is for: made with the shortcuts on, a copy keeps them, and its eval() reaches the original.
    assert "train" in vars(leaked)
    leaked.eval()
    assert not model.training and leaked.training

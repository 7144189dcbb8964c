"""Bad inputs found before anything is built, in-process: each check's one line on small configs (the commands
themselves, end to end, are in tests/test_bad_inputs.py)."""
import shutil

import pytest
from omegaconf import OmegaConf

from gpt2_hpu import checks, cli, distributed
from gpt2_hpu.errors import UsageError

from helpers import PACKAGE_DIR, launch_cfg


def _data_cfg(data, train_subset="train", valid_subset="valid", disable_validation=False, **dataset):
    return OmegaConf.create({
        "task": {"_name": "language_modeling", "data": str(data)},
        "dataset": dict({"train_subset": train_subset, "valid_subset": valid_subset, "dataset_impl": None,
                         "disable_validation": disable_validation, "combine_valid_subsets": False}, **dataset),
    })


def _folder(tmp_path, name, *splits):
    """A data folder with dict.txt and the named splits of the tiny dataset."""
    from conftest import _write_split

    from fairseq.data import Dictionary

    folder = tmp_path / name
    folder.mkdir()
    d = Dictionary()
    for word in "a small text for the splits".split():
        d.add_symbol(word)
    d.save(str(folder / "dict.txt"))
    for split in splits:
        _write_split(folder / split, ["a small text", "for the splits"], d)
    return folder


# --- the data folder ------------------------------------------------------------------------------------------
def test_a_missing_or_empty_data_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.txt").write_text("text")
    for name, what in [("nope", "does not exist"), ("empty", "is empty"), ("other", "has no dict.txt")]:
        assert checks.language_modeling_data(_data_cfg(tmp_path / name)) == (
            f"task.data: {tmp_path / name} {what}; give the folder that gpt2-hpu-prepare (or fairseq-preprocess) "
            f"wrote, with dict.txt and the .bin/.idx splits")


def test_a_folder_without_its_training_split_is_one_line(tmp_path):
    folder = _folder(tmp_path, "data", "valid")
    assert checks.training_splits(_data_cfg(folder)) == (
        f"task.data: {folder} has no training split 'train' (train.bin, train.idx): give the folder "
        f"gpt2-hpu-prepare (or fairseq-preprocess) wrote, or name its training split with --train-subset "
        f"(dataset.train_subset)")
    assert checks.training_splits(_data_cfg(folder, train_subset="valid")) is None


def test_every_data_folder_needs_a_training_split(tmp_path):
    """Fairseq trains epoch N on folder N (mod their number): a folder without one fails hours in."""
    first, second = _folder(tmp_path, "a", "train", "valid"), _folder(tmp_path, "b", "valid")
    message = checks.training_splits(_data_cfg(f"{first}:{second}"))
    assert message.startswith(f"task.data: {second} has no training split 'train'")


def test_a_validation_split_the_run_loads_must_exist(tmp_path):
    folder = _folder(tmp_path, "data", "train", "valid")
    assert checks.training_splits(_data_cfg(folder)) is None
    assert checks.training_splits(_data_cfg(folder, valid_subset="valid,valid1")) == (
        f"task.data: {folder} has no validation split 'valid1' (valid1.bin, valid1.idx), and validation is on: "
        f"add one, or name the folder's validation splits with --valid-subset (dataset.valid_subset), or pass "
        f"--disable-validation")


def test_disabled_validation_needs_no_split_unless_this_fairseq_loads_it_anyway(tmp_path):
    import fairseq

    # Fairseq 0.12.2 loads the validation splits even with --disable-validation; fairseq-fixed does not.
    assert checks._validation_splits_always_loaded() is (fairseq.__version__ == "0.12.2")
    folder = _folder(tmp_path, "data", "train")
    message = checks.training_splits(_data_cfg(folder, disable_validation=True))
    if checks._validation_splits_always_loaded():
        assert message.startswith(f"task.data: {folder} has no validation split 'valid' (valid.bin, valid.idx), "
                                  "which this Fairseq loads even with --disable-validation: add one")
    else:
        assert message is None


def test_split_checks_are_for_training_only(tmp_path):
    """fairseq-eval-lm and fairseq-validate go through call_main too, with splits of their own."""
    import fairseq_cli.eval_lm
    import fairseq_cli.train
    import fairseq_cli.validate

    assert checks.trains(fairseq_cli.train.main)
    assert not checks.trains(fairseq_cli.eval_lm.main) and not checks.trains(fairseq_cli.validate.main)
    cfg = _data_cfg(_folder(tmp_path, "data", "test"))
    with pytest.raises(UsageError, match="has no training split 'train'"):
        checks.check(cfg, training=True)
    checks.check(cfg, training=False)


# --- devices and precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("other,where", [("cpu", "the CPU"), ("tpu", "a TPU through torch_xla")])
def test_hpu_with_another_device_is_refused(other, where):
    assert checks.devices(launch_cfg(**{other: True})) == (
        f"--hpu with --{other} (common.hpu and common.{other}): choose one device: --hpu trains on Gaudi, "
        f"--{other} on {where}")
    assert checks.devices(launch_cfg(hpu=False, **{other: True})) is None


@pytest.mark.parametrize("argv,refused", [(["--hpu", "--bf16"], False), (["--hpu", "--bf16", "--tpu"], True)])
def test_only_a_tpu_asked_for_clashes_with_hpu(argv, refused):
    """Fairseq's argparse implies --tpu for --bf16; the plugin drops that one before the checks."""
    cfg = launch_cfg(bf16=True, tpu=True, cpu=False)
    checks.undo_implied_tpu(cfg, argv)
    assert (checks.devices(cfg) is not None) is refused


@pytest.mark.parametrize("argv,start", [
    (["--bf16", "--fp16"], "--bf16 with --fp16 or --amp: choose one precision"),
    (["--memory-efficient-bf16", "--memory-efficient-fp16"], "--bf16 with --fp16 or --amp: choose one precision"),
    (["--hpu", "--tpu", "--fp16"], "--hpu with --tpu (common.hpu and common.tpu): choose one device"),
])
def test_what_fairseqs_argparse_refuses_gets_the_checks_line(argv, start):
    assert checks.command_line(["data", *argv, "--lr", "0.1"]).startswith(start)


def test_fairseqs_own_argparse_refusals_stay_its_own():
    assert checks.command_line(["data", "--tpu", "--fp16"]) is None


# --- ZeRO-1 and the world size --------------------------------------------------------------------------------
def _dt_cfg(world=1, zero="os", model_parallel=1, cpu=True):
    cfg = launch_cfg(hpu=False, cpu=cpu, tpu=False, model_parallel_size=model_parallel)
    cfg.distributed_training.distributed_world_size = world
    cfg.distributed_training.zero_sharding = zero
    cfg.distributed_training.distributed_port = -1
    return cfg


@pytest.mark.parametrize("world,zero,model_parallel,refused", [
    (1, "os", 1, True), (2, "os", 1, False), (2, "os", 2, True), (1, "none", 1, False)])
def test_zero_sharding_needs_two_data_parallel_ranks(world, zero, model_parallel, refused):
    message = checks.zero_sharding(_dt_cfg(world, zero, model_parallel))
    assert (message is not None) is refused
    if refused:
        assert message == ("--zero-sharding os shards the optimizer state across data-parallel ranks, and this run "
                           "has one: launch two or more (--distributed-world-size N, torchrun or mpirun), or leave "
                           "--zero-sharding out")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE",
                 "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _call_main(cfg):
    """distributed.call_main up to the launch: returns how it launched, or raises SystemExit after one line."""
    launched = []
    distributed.call_main(cfg, lambda cfg, **kw: launched.append("main"),
                          lambda cfg, main, **kw: launched.append("fairseq"), lambda: None)
    return launched


def test_zero_sharding_is_judged_on_the_launchs_world_size(no_launcher, capsys):
    """mpirun and torchrun give the world size in the environment: --distributed-world-size may be left at 1."""
    with pytest.raises(SystemExit) as e:
        _call_main(_dt_cfg(world=1))
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("gpt2-hpu: error: --zero-sharding os shards the optimizer state")

    no_launcher.setattr(distributed, "_run_rank", lambda *args: None)
    no_launcher.setattr(distributed.preemption, "install", lambda: None)  # no signal handlers in pytest
    for name, value in {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}.items():
        no_launcher.setenv(name, value)
    cfg = _dt_cfg(world=1)
    _call_main(cfg)
    assert cfg.distributed_training.distributed_world_size == 2


@pytest.fixture
def two_gpus(no_launcher):
    import torch

    no_launcher.setattr(torch.cuda, "is_available", lambda: True)
    no_launcher.setattr(torch.cuda, "device_count", lambda: 2)
    return no_launcher


def test_more_ranks_than_gpus_is_one_line(two_gpus, capsys):
    with pytest.raises(SystemExit) as e:
        _call_main(_dt_cfg(world=4, zero="none", cpu=False))
    assert e.value.code == 2
    assert capsys.readouterr().err == ("gpt2-hpu: error: --distributed-world-size 4 asks for 4 GPUs but this host "
                                       "has 2: lower it, or launch across hosts with torchrun or Slurm\n")
    assert _call_main(_dt_cfg(world=2, zero="none", cpu=False)) == ["fairseq"]


@pytest.mark.parametrize("setting", ["init_method", "port", "torchrun", "cpu"])
def test_launches_across_hosts_may_ask_for_more_ranks_than_local_gpus(two_gpus, setting):
    cfg = _dt_cfg(world=4, zero="none", cpu=setting == "cpu")
    if setting == "init_method":
        cfg.distributed_training.distributed_init_method = "tcp://host0:29500"
    elif setting == "port":
        cfg.distributed_training.distributed_port = 29500
    elif setting == "torchrun":
        for name, value in {"MASTER_ADDR": "host0", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "0"}.items():
            two_gpus.setenv(name, value)
    if setting == "cpu":  # the plugin's own launch: gloo processes on this host, no device limit
        two_gpus.setattr(distributed, "_spawn", lambda *args: None)
        assert _call_main(cfg) == []
    else:
        assert _call_main(cfg) == ["fairseq"]


def test_zero_sharding_on_one_gpu_is_refused_before_fairseqs_launch(two_gpus, capsys):
    with pytest.raises(SystemExit):
        _call_main(_dt_cfg(world=1, cpu=False))
    assert "--zero-sharding os shards the optimizer state" in capsys.readouterr().err


# --- settings and paths ---------------------------------------------------------------------------------------
def test_unknown_settings_are_named():
    assert checks.unknown_settings(OmegaConf.create({"common": {"seed": 1}, "job_logging_cfg": {}})) is None
    assert checks.unknown_settings(OmegaConf.create({"common": {"seed": 1, "nope": 1}})) == (
        "common.nope is not a setting: fix its name or remove it (gpt2-hpu-train --help lists the settings)")
    assert checks.unknown_settings(OmegaConf.create({"nope": {"x": 3}})) == (
        "nope is not a section of Fairseq's configuration: fix its name or remove it")


def test_a_user_dir_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"common": {"user_dir": str(tmp_path / "nope")}})
    assert checks.user_dir(cfg) == (
        f"common.user_dir {tmp_path / 'nope'}: no such folder; give the folder of an importable plugin package, "
        "or leave common.user_dir out (gpt2-hpu-hydra-train loads gpt2_hpu itself)")
    assert checks.user_dir(OmegaConf.create({"common": {"user_dir": str(PACKAGE_DIR)}})) is None
    # Fairseq also looks beside its own package, as import_user_module does.
    assert not checks.user_dir_missing("config") and checks.user_dir_missing("no-such-plugin")


@pytest.mark.parametrize("option", [["--user-dir", "/no/such/plugin"], ["--user-dir=/no/such/plugin"]])
def test_gpt2_hpu_train_names_a_missing_user_dir(option, capsys):
    with pytest.raises(SystemExit) as e:
        cli._check_user_dir("gpt2-hpu-train", ["data", *option, "--lr", "0.1"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "gpt2-hpu-train: error: --user-dir /no/such/plugin: no such folder; give the folder of an importable "
        "plugin package, or leave --user-dir out (gpt2-hpu-train loads gpt2_hpu itself)\n")


def test_a_config_name_without_its_file_is_named(tmp_path):
    configs, fairseq_configs = tmp_path / "configs", tmp_path / "fairseq-config"
    configs.mkdir()
    fairseq_configs.mkdir()
    (configs / "demo.yaml").write_text("common: {}\n")
    (fairseq_configs / "config.yaml").write_text("common: {}\n")
    assert cli.missing_config_name(str(configs), "demo", str(fairseq_configs)) is None
    assert cli.missing_config_name(str(configs), "config", str(fairseq_configs)) is None
    assert cli.missing_config_name(str(configs), "dmeo", str(fairseq_configs)) == (
        f"--config-name dmeo: there is no dmeo.yaml in --config-dir {configs}: fix the name, or give the folder "
        "that holds it")
    shutil.rmtree(configs)
    assert cli.missing_config_name(str(configs), "demo", str(fairseq_configs)) is None  # Hydra's own line


def _composition_error(override_key):
    """The error Hydra raises for an override of a key the schema lacks, with OmegaConf's error as its cause."""
    from dataclasses import dataclass

    from hydra.errors import ConfigCompositionException

    @dataclass
    class Common:
        hpu: bool = False

    cfg = OmegaConf.structured({"common": Common})
    OmegaConf.set_struct(cfg, True)
    try:
        try:
            OmegaConf.update(cfg, override_key, 1, merge=True)
        except Exception as cause:
            raise ConfigCompositionException(f"Could not override '{override_key}'.\nTo append to your config use "
                                             f"+{override_key}=1") from cause
    except ConfigCompositionException as e:
        return e


def test_hydras_unknown_key_error_is_one_line():
    line = cli.hydra_error_line(_composition_error("common.nope"))
    assert "\n" not in line
    assert line.startswith("Could not override 'common.nope': Key 'nope' ")
    assert line.endswith("; common.nope is not a setting: fix its name or remove it (gpt2-hpu-train --help lists "
                         "the settings)")
    assert "+common.nope" not in line


def test_other_hydra_errors_keep_their_first_paragraph():
    from hydra.errors import MissingConfigException, OverrideParseException

    assert cli.hydra_error_line(OverrideParseException("foo", "Error parsing override 'foo'\nmissing EQUAL at "
                                                       "'<EOF>'\nSee https://hydra.cc for details")) == (
        "Error parsing override 'foo': missing EQUAL at '<EOF>': See https://hydra.cc for details")
    assert cli.hydra_error_line(MissingConfigException("Cannot find primary config 'x'. Check that it's in your "
                                                       "config search path.\n\nConfig search path:\n\tfile://a",
                                                       "x")) == (
        "Cannot find primary config 'x'. Check that it's in your config search path")


def test_an_evaluation_checkpoint_that_does_not_exist_is_named(tmp_path):
    saved = tmp_path / "checkpoint_best.pt"
    saved.write_bytes(b"")
    missing = tmp_path / "checkpoint_last.pt"
    cfg = OmegaConf.create({"common_eval": {"path": f"{saved}:{missing}"}})
    assert checks.model_paths(cfg) == f"--path {missing}: no such checkpoint file; give the .pt file a training " \
        "run saved"
    assert checks.model_paths(OmegaConf.create({"common_eval": {"path": str(saved)}})) is None
    assert checks.model_paths(OmegaConf.create({"common_eval": {"path": None}})) is None

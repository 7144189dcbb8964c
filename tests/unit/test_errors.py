"""Every user-facing error is one line, `PROG: error: MESSAGE`, with its exit status; and the emulation's
side of the contract: how GPT2_HPU_EMULATE is read, and what --hpu says without Habana's software."""
import importlib.util

import pytest

from gpt2_hpu import demo, emulation
from gpt2_hpu.data.prepare import prepare
from gpt2_hpu.device import HabanaUnavailable, HpuDevice
from gpt2_hpu.errors import DemoError, Gpt2HpuError, PrepareError, UsageError


@pytest.mark.parametrize("error,line,code", [
    (UsageError("bad launch"), "gpt2-hpu: error: bad launch", 2),
    (HabanaUnavailable("no bridge"), "gpt2-hpu: error: no bridge", 2),
    (PrepareError("bad input"), "gpt2-hpu-prepare: error: bad input", 1),
    (PrepareError("destdir taken", exit_code=2), "gpt2-hpu-prepare: error: destdir taken", 2),
    (DemoError("training failed"), "gpt2-hpu-demo: error: training failed", 1),
    (UsageError("no fairseq", prog="gpt2-hpu-train"), "gpt2-hpu-train: error: no fairseq", 2),
])
def test_an_error_exits_with_its_one_line(capsys, error, line, code):
    assert isinstance(error, Gpt2HpuError)
    with pytest.raises(SystemExit) as e:
        error.exit()
    assert e.value.code == code
    assert capsys.readouterr().err == line + "\n"


def test_prepare_reports_a_missing_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.jsonl"
    assert prepare(["--input", str(missing), "--destdir", str(tmp_path / "out"), "--quiet"]) == 1
    assert capsys.readouterr().err == f"gpt2-hpu-prepare: error: input {missing} not found\n"


def test_demo_without_its_config_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--workdir", str(tmp_path / "w"), "--config-dir", str(tmp_path)])
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"gpt2-hpu-demo: error: no demo.yaml in {tmp_path}: run from the repository "
                                       "root or pass --config-dir\n")


@pytest.mark.parametrize("value,count", [(None, 0), ("", 0), (" 2 ", 2), ("0", 0), ("8", 8)])
def test_emulated_card_count(monkeypatch, value, count):
    if value is None:
        monkeypatch.delenv(emulation.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(emulation.ENV_VAR, value)
    assert emulation.requested_device_count() == count


@pytest.mark.parametrize("value,message", [
    ("two", "GPT2_HPU_EMULATE='two' is not a number: set it to the number of emulated HPUs, e.g. GPT2_HPU_EMULATE=2"),
    ("-1", "GPT2_HPU_EMULATE='-1' must be >= 0"),
])
def test_a_bad_emulation_setting_is_a_usage_error(monkeypatch, value, message):
    monkeypatch.setenv(emulation.ENV_VAR, value)
    with pytest.raises(UsageError) as e:
        HpuDevice()
    assert str(e.value) == message


@pytest.mark.skipif(importlib.util.find_spec("habana_frameworks") is not None, reason="Habana's bridge is installed")
def test_without_habana_hpu_says_how_to_emulate(monkeypatch):
    monkeypatch.delenv(emulation.ENV_VAR, raising=False)
    with pytest.raises(UsageError) as e:
        HpuDevice()
    assert str(e.value).startswith("--hpu needs Habana's PyTorch bridge (habana_frameworks), which is not importable")
    assert str(e.value).endswith("on a machine without Gaudi set GPT2_HPU_EMULATE=N to emulate N HPUs on the CPU")

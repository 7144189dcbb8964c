"""Perplexity on the (emulated) HPU equals stock Fairseq's on the CPU; stock Fairseq, with the plugin unimportable,
loads a checkpoint the plugin trained on the HPU in the fast path; a seed samples the same text on the HPU and the
CPU. One checkpoint serves every test: 4 updates of the tiny model with --hpu --fast-path (lazy mode) on the
demo corpus in GPT-2 BPE (its dictionary capped at 500 symbols)."""
import json
import math
import re
import sys

import pytest
import torch

from helpers import BIN, BLOCK_PLUGIN, PACKAGE_DIR, TINY_MODEL, emulation_env, fairseq_train, run

EVAL = ["--tokens-per-sample", "32", "--batch-size", "16", "--gen-subset", "valid", "--num-workers", "0"]

# Stock fairseq-eval-lm on the CPU, then the same checkpoint through TransformerLanguageModel.from_pretrained:
# its log-probs of every block of the valid split, as a loss in bits per token.
STOCK_EVAL_AND_HUB = BLOCK_PLUGIN + """
import json, math, os
import torch
from fairseq_cli.eval_lm import cli_main
checkpoint, data = sys.argv[1], sys.argv[2]
sys.argv = ["fairseq-eval-lm", data, "--path", checkpoint] + sys.argv[3:]
cli_main()

from fairseq.models.transformer_lm import TransformerLanguageModel
lm = TransformerLanguageModel.from_pretrained(os.path.dirname(checkpoint), os.path.basename(checkpoint),
                                              data_name_or_path=data).eval()
lm.task.load_dataset("valid")
blocks = lm.task.dataset("valid")
model, nll, count = lm.models[0], 0.0, 0
with torch.no_grad():
    for i in range(len(blocks)):
        source, target = blocks[i]["source"], blocks[i]["target"]
        log_probs = model.get_normalized_probs(model(source[None]), log_probs=True)[0]
        nll -= float(log_probs.gather(-1, target[:, None]).sum())
        count += target.numel()
print("HUB " + json.dumps({"loss": nll / count / math.log(2), "blocks": len(blocks),
                           "user_dir": lm.cfg.common.user_dir, "plugin_loaded": "gpt2_hpu" in sys.modules}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, checkpoint): GPT-2 BPE data, and a checkpoint the plugin trained on the emulated HPU."""
    from gpt2_hpu.data.prepare import prepare

    root = tmp_path_factory.mktemp("evaluation")
    data = root / "data"
    assert prepare(["--demo-corpus", "--destdir", str(data), "--nwordssrc", "500", "--quiet"]) == 0
    args = [data, "--user-dir", PACKAGE_DIR, "--hpu", "--fast-path", *TINY_MODEL, "--max-update", "4",
            "--save-dir", root / "ckpt"]
    args.remove("--no-last-checkpoints")
    fairseq_train(args, env=emulation_env(1, "lazy"))
    return data, root / "ckpt" / "checkpoint_last.pt"


def _printed_result(output):
    found = re.findall(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", output)
    assert len(found) == 1, output[-3000:]
    return tuple(float(x) for x in found[0])


@pytest.fixture(scope="module")
def stock(trained):
    """What stock Fairseq, with gpt2_hpu unimportable, makes of the checkpoint on the CPU."""
    data, checkpoint = trained
    proc = run([sys.executable, "-c", STOCK_EVAL_AND_HUB, checkpoint, data, *EVAL], env=emulation_env(0, None))
    assert proc.returncode == 0, proc.output[-3000:]
    hub = json.loads(proc.stdout.split("HUB ", 1)[1].splitlines()[0])
    return _printed_result(proc.output), hub


def _close(ours, stocks):
    loss, ppl = ours
    stock_loss, stock_ppl = stocks
    # 1e-4 relative; the perplexity is printed to 2 decimals, so half of its last digit too.
    return math.isclose(loss, stock_loss, rel_tol=1e-4) and math.isclose(ppl, stock_ppl, rel_tol=1e-4, abs_tol=0.005)


@pytest.mark.parametrize("mode", ["lazy", "eager"])
def test_perplexity_on_the_hpu_equals_stock_fairseq_on_the_cpu(mode, trained, stock):
    data, checkpoint = trained
    if mode == "lazy":
        cmd = [BIN / "fairseq-eval-lm", data, "--path", checkpoint, "--user-dir", PACKAGE_DIR, "--hpu", *EVAL]
    else:  # gpt2-hpu-eval-lm (called as its console script does)
        cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'gpt2-hpu-eval-lm'; "
               "from gpt2_hpu.cli import eval_lm_main; eval_lm_main()", data, "--path", checkpoint, "--hpu", *EVAL]
    proc = run(cmd, env=emulation_env(1, mode))
    assert proc.returncode == 0, proc.output[-3000:]
    assert f"evaluating on HPU ({mode} mode)" in proc.output
    batches, mark_steps = (int(x) for x in re.search(r"evaluated (\d+) batches on HPU, (\d+) mark_steps",
                                                      proc.output).groups())
    assert batches > 1 and mark_steps == (batches if mode == "lazy" else 0)
    ours, (stock_result, _) = _printed_result(proc.output), stock
    assert _close(ours, stock_result), (ours, stock_result)


def test_stock_fairseq_loads_the_checkpoint_with_the_same_log_probs(trained, stock):
    data, checkpoint = trained
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["cfg"]
    # What stock Fairseq had to read past: the plugin's fields, its optimizer, a user dir it never imports.
    assert saved["common"]["hpu"] and saved["common"]["fused_attention"] and saved["common"]["fast_path"]
    assert saved["optimizer"]["_name"] == "fused_adamw"
    assert saved["common"]["user_dir"] == str(PACKAGE_DIR)

    (loss, ppl), hub = stock
    assert hub["blocks"] > 8 and hub["plugin_loaded"] is False and hub["user_dir"] == str(PACKAGE_DIR)
    assert math.isclose(hub["loss"], loss, rel_tol=1e-4), (hub, loss)
    assert math.isclose(2 ** hub["loss"], ppl, rel_tol=1e-4, abs_tol=0.005)


def test_a_seed_samples_the_same_text_on_the_hpu_and_the_cpu(trained):
    data, checkpoint = trained
    prompt = "The for statement"

    proc = run([sys.executable, "-m", "gpt2_hpu.sampling", "--path", checkpoint, "--data", data, "--device", "hpu",
                "--prompt", prompt, "--tokens", "16", "--seed", "7"], env=emulation_env(1, "lazy"))
    assert proc.returncode == 0, proc.output[-3000:]
    hpu = proc.stdout
    # The CPU in this process: what the command runs, without another start-up.
    from gpt2_hpu.sampling import sample

    cpu = sample(checkpoint, data, prompt, tokens=16, seed=7, device="cpu") + "\n"
    assert hpu == cpu
    assert hpu.startswith(prompt)
    continuation = hpu[len(prompt):].strip()
    # Decoded text, not the dictionary's symbols (GPT-2 BPE ids written as numbers).
    assert continuation and not re.fullmatch(r"[\d\s]+", continuation), hpu

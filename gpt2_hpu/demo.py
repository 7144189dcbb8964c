"""`gpt2-hpu-demo`: prepare a real English corpus, train a small GPT-2 on the best device here, sample.

    prepare  Python's own reference-manual text -> GPT-2 BPE -> Fairseq data   (gpt2-hpu-prepare)
    train    configs/demo.yaml through gpt2-hpu-hydra-train on HPU > CUDA > CPU
    sample   the saved checkpoint continues a prompt

Everything lands under --workdir (default runs/demo); a second run reuses the prepared data.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from gpt2_hpu.errors import DemoError, Gpt2HpuError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def pick_device():
    """Gaudi (or its emulation) first, then CUDA, then the CPU; returns (device, description)."""
    try:
        from gpt2_hpu.device import HabanaUnavailable, HpuDevice

        hpu = HpuDevice()
        # Only questions that do not acquire a card: on a 1-card host, a parent holding it would starve the
        # training child (asking the device name acquires it).
        if hpu.is_available():
            cards = hpu.device_count()
            return "hpu", (f"hpu ({cards} {'emulated ' if hpu.emulated else ''}card{'s' if cards > 1 else ''}, "
                           f"{'lazy' if hpu.lazy else 'eager'} mode)")
    except (HabanaUnavailable, ImportError):
        pass
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, device


def prepare(data_dir):
    from gpt2_hpu.data.prepare import prepare as run_prepare

    code = run_prepare(["--demo-corpus", "--destdir", str(data_dir)])
    if code != 0:
        raise SystemExit(code)


def train(device, data_dir, save_dir, workdir, config_dir, extra_overrides):
    hydra_train = Path(sys.executable).parent / "gpt2-hpu-hydra-train"
    launcher = [str(hydra_train)] if hydra_train.exists() else \
        [sys.executable, "-c", "from gpt2_hpu.cli import hydra_train_main; hydra_train_main()"]
    cmd = launcher + ["--config-dir", str(config_dir), "--config-name", "demo", f"task.data={data_dir}",
                      f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={workdir / 'hydra'}"]
    if device == "hpu":
        cmd.append("common.hpu=true")
    elif device == "cpu":
        cmd.append("common.cpu=true")
    cmd += extra_overrides
    print("$ " + " ".join(cmd), flush=True)

    train_losses, valid_losses = [], []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if "UserWarning" in line or line.startswith("  "):
            continue  # library deprecation chatter
        sys.stdout.write(line)
        if "[train_inner]" in line and (m := re.search(r"\bloss=([\d.]+)", line)):
            train_losses.append(float(m.group(1)))
        elif "valid on 'valid' subset" in line and (m := re.search(r"\| loss ([\d.]+)", line)):
            valid_losses.append(float(m.group(1)))
    if proc.wait() != 0:
        raise DemoError(f"training failed (exit {proc.returncode}); see the log above")
    return train_losses, valid_losses


def sample(checkpoint, data_dir, prompt, tokens=60, seed=0):
    import torch

    from fairseq import checkpoint_utils

    from gpt2_hpu.data.bpe import VocabSource

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                      arg_overrides={"data": str(data_dir)})
    model = models[0].eval().float().cpu()
    dictionary = task.target_dictionary
    encoding = VocabSource.parse().build()
    # Dictionary symbols are GPT-2 token ids written as text; anything else (<unk>, padding) is never sampled.
    is_token = torch.tensor([s.isdigit() for s in dictionary.symbols])
    is_token[dictionary.eos()] = True
    context = [dictionary.eos()] + [dictionary.index(str(t)) for t in encoding.encode_ordinary(prompt)]
    window = cfg.task.tokens_per_sample
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(tokens):
            logits = model(torch.tensor([context[-window:]]))[0][0, -1].float()
            logits[~is_token] = float("-inf")
            top = torch.topk(logits, 40)
            probs = torch.softmax(top.values / 0.8, dim=-1)
            context.append(int(top.indices[torch.multinomial(probs, 1, generator=generator)]))
    pieces = []
    for index in context[1:]:
        symbol = dictionary[index]
        pieces.append("\n" if index == dictionary.eos() else encoding.decode([int(symbol)]))
    return "".join(pieces)


def main(argv=None):
    try:
        return _run(argv)
    except Gpt2HpuError as e:  # DemoError, or a UsageError such as a bad GPT2_HPU_EMULATE
        e.exit()


def _run(argv):
    parser = argparse.ArgumentParser(prog="gpt2-hpu-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="where data, checkpoints and logs go")
    parser.add_argument("--config-dir", default=str(REPO_CONFIGS), help="folder holding demo.yaml")
    parser.add_argument("--device", choices=["auto", "hpu", "cuda", "cpu"], default="auto")
    parser.add_argument("--prompt", default="The for statement")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. optimization.max_update=100")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    data_dir, save_dir = workdir / "data", workdir / "checkpoints"
    if not (Path(args.config_dir) / "demo.yaml").is_file():
        raise DemoError(f"no demo.yaml in {args.config_dir}: run from the repository root or pass --config-dir")

    started = time.time()
    device, description = pick_device() if args.device == "auto" else (args.device, args.device)
    print(f"== device: {description}", flush=True)
    print("== prepare: Python's reference-manual text -> GPT-2 BPE", flush=True)
    prepare(data_dir)
    print("== train: configs/demo.yaml", flush=True)
    train_started = time.time()
    train_losses, valid_losses = train(device, data_dir, save_dir, workdir, args.config_dir, args.overrides)
    train_seconds = time.time() - train_started
    checkpoint = save_dir / "checkpoint_last.pt"
    print("== sample", flush=True)
    text = sample(checkpoint, data_dir, args.prompt)

    print("\n== summary")
    print(f"device              {description}")
    print(f"training time       {train_seconds:.0f} s (all steps {time.time() - started:.0f} s)")
    if train_losses:
        print(f"train loss (bits)   {train_losses[0]:.2f} -> {train_losses[-1]:.2f}  ({len(train_losses)} log lines)")
    if valid_losses:
        print("valid loss (bits)   " + " -> ".join(f"{v:.2f}" for v in valid_losses))
    print(f"checkpoint          {checkpoint}")
    print(f"sample              {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`gpt2-hpu-demo`: prepare a real English corpus, train a small GPT-2 on the best device here, sample.

    prepare  Python's own reference-manual text -> GPT-2 BPE -> Fairseq data   (gpt2-hpu-prepare)
    train    configs/demo.yaml through gpt2-hpu-hydra-train on HPU > CUDA > CPU
    sample   the saved checkpoint continues a prompt on the same device   (gpt2-hpu-sample)

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


def sample(checkpoint, data_dir, prompt, device):
    """gpt2-hpu-sample on the training device, in a child process (this process never holds a card)."""
    cmd = [sys.executable, "-m", "gpt2_hpu.sampling", "--path", str(checkpoint), "--data", str(data_dir),
           "--device", device, "--prompt", prompt]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise DemoError(f"sampling failed (exit {proc.returncode}); see the log above")
    return proc.stdout.rstrip("\n")


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
    if args.device == "auto":
        from gpt2_hpu.device import best_available

        device, description = best_available()
    else:
        device, description = args.device, args.device
    print(f"== device: {description}", flush=True)
    print("== prepare: Python's reference-manual text -> GPT-2 BPE", flush=True)
    prepare(data_dir)
    print("== train: configs/demo.yaml", flush=True)
    train_started = time.time()
    train_losses, valid_losses = train(device, data_dir, save_dir, workdir, args.config_dir, args.overrides)
    train_seconds = time.time() - train_started
    checkpoint = save_dir / "checkpoint_last.pt"
    print("== sample", flush=True)
    text = sample(checkpoint, data_dir, args.prompt, device)

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

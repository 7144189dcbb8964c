"""Console scripts that load the plugin before Fairseq parses or validates anything.

`gpt2-hpu-train` is `fairseq-train --user-dir <this package>`, `gpt2-hpu-eval-lm` is
`fairseq-eval-lm --user-dir <this package>` (perplexity, on the HPU with --hpu); `gpt2-hpu-hydra-train` is
`fairseq-hydra-train` with the `--hpu` options already in Hydra's schema, so YAML files may set
`common.hpu` (stock fairseq-hydra-train fixes its schema before any user dir is imported).
"""
import importlib.util
import os
import sys

from gpt2_hpu.errors import UsageError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _load_plugin(prog, fairseq_cli_module):
    if importlib.util.find_spec("fairseq") is None:
        UsageError("Fairseq is not installed: pip install 'gpt2-hpu[fairseq]' (fairseq-fixed), or install "
                   "fairseq 0.12.2 from its source tag", prog=prog).exit()
    # Fairseq's CLI module first: it sets up logging at import, as under fairseq-train.
    importlib.import_module(fairseq_cli_module)
    from gpt2_hpu import adaptations

    adaptations.apply()


def _has_option(argv, name):
    return any(a == name or a.startswith(name + "=") for a in argv)


def train_main():
    _load_plugin("gpt2-hpu-train", "fairseq_cli.train")
    # Spawned ranks re-import the user dir named in the config: name this package.
    if not _has_option(sys.argv[1:], "--user-dir"):
        sys.argv[1:1] = ["--user-dir", PACKAGE_DIR]
    from fairseq_cli.train import cli_main

    cli_main()


def eval_lm_main():
    _load_plugin("gpt2-hpu-eval-lm", "fairseq_cli.eval_lm")
    if not _has_option(sys.argv[1:], "--user-dir"):
        sys.argv[1:1] = ["--user-dir", PACKAGE_DIR]
    from fairseq_cli.eval_lm import cli_main

    cli_main()


def hydra_train_main():
    _load_plugin("gpt2-hpu-hydra-train", "fairseq_cli.hydra_train")
    if not any(a.split("=", 1)[0].lstrip("+") == "common.user_dir" for a in sys.argv[1:]):
        sys.argv.append(f"common.user_dir={PACKAGE_DIR}")
    from fairseq_cli.hydra_train import cli_main

    cli_main()

"""Console scripts that load the plugin before Fairseq parses or validates anything.

`gpt2-hpu-train` is `fairseq-train --user-dir <this package>`, `gpt2-hpu-eval-lm` is
`fairseq-eval-lm --user-dir <this package>` (perplexity, on the HPU with --hpu); `gpt2-hpu-hydra-train` is
`fairseq-hydra-train` with the `--hpu` options already in Hydra's schema, so YAML files may set
`common.hpu` (stock fairseq-hydra-train fixes its schema before any user dir is imported). They say what is
wrong in one line where Fairseq or Hydra would print a traceback or a paragraph, or go on silently: a
--user-dir that does not exist (Fairseq imports it before anything else), a --config-name with no file, and
Hydra's configuration errors (an unknown key in a YAML file or an override).
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


def _option_values(argv, name):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            yield argv[i + 1]
        elif a.startswith(name + "="):
            yield a.split("=", 1)[1]


def _check_user_dir(prog, argv):
    """Fairseq imports --user-dir before it parses anything else, and a missing one ends in its bare
    `FileNotFoundError: PATH` traceback."""
    from gpt2_hpu import checks

    for path in _option_values(argv, "--user-dir"):
        if checks.user_dir_missing(path):
            UsageError(checks.user_dir_line(path, "--user-dir", prog), prog=prog).exit()


def _first_line(text):
    return text.strip().splitlines()[0].strip().rstrip(".:") if text.strip() else ""


def hydra_error_line(error):
    """One line for a Hydra configuration error: Hydra's own first paragraph and the OmegaConf error under it.
    For an unknown key, Hydra's first line only (its second proposes `+key=value`, which the schema refuses
    too), the key, and what to do."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = error.__cause__ or error.__context__
    if not isinstance(cause, OmegaConfBaseException):
        cause = None
    full_key = getattr(cause, "full_key", None)
    if full_key and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return (f"{_first_line(str(error))}: {_first_line(str(cause))}; {full_key} is not a setting: fix its name "
                f"or remove it (gpt2-hpu-train --help lists the settings)")
    paragraph = str(error).strip().split("\n\n")[0]
    lines = [line.strip().rstrip(".:") for line in paragraph.splitlines() if line.strip()]
    if cause is not None and str(cause).strip() and _first_line(str(cause)) not in paragraph:
        lines.append(_first_line(str(cause)))
    return ": ".join(lines) or type(error).__name__


def missing_config_name(config_dir, config_name, fairseq_config_dir):
    """The one line for a --config-name found neither in --config-dir nor among Fairseq's own configs, or None.
    Fairseq registers its schema under whatever name is given, so Hydra composes an unknown name into Fairseq's
    defaults alone: the run fails much later (no batch size), or trains a model nobody asked for."""
    if not config_name or not config_dir or not os.path.isdir(config_dir):
        return None  # Hydra says itself, in one line, that a --config-dir does not exist
    name = config_name if config_name.endswith(".yaml") else config_name + ".yaml"
    if any(os.path.isfile(os.path.join(folder, name)) for folder in (config_dir, fairseq_config_dir)):
        return None
    return (f"--config-name {config_name}: there is no {name} in --config-dir {config_dir}: fix the name, or "
            f"give the folder that holds it")


def _check_config_name(prog):
    spec = importlib.util.find_spec("fairseq")
    if spec is None or importlib.util.find_spec("hydra") is None:
        return  # _load_plugin says what is missing
    from hydra._internal.utils import get_args

    args = get_args()
    if args.config_path is None:
        fairseq_config = os.path.join(os.path.dirname(spec.origin), "config")
        message = missing_config_name(args.config_dir, args.config_name, fairseq_config)
        if message:
            UsageError(message, prog=prog).exit()


def _hydra_errors_in_one_line(prog):
    """Hydra prints a configuration error (an unknown key in a file or an override, a bad override, a missing
    config folder) as a paragraph and a hint about HYDRA_FULL_ERROR, exit 1; here it is the family's one line.
    The errors pass through Hydra's run_and_report (hydra-core 1.0 to 1.3), which is wrapped for them alone:
    anything else, and everything with HYDRA_FULL_ERROR=1, is Hydra's as before."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import CompactHydraException

    report = hydra_utils.run_and_report

    def run_and_report(func):
        def run():
            try:
                return func()
            except CompactHydraException as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                UsageError(hydra_error_line(e), prog=prog).exit()

        return report(run)

    hydra_utils.run_and_report = run_and_report


def _run_fairseq_command(prog, module_name):
    """`prog` is Fairseq's `module_name` command with `--user-dir` naming this package (spawned ranks re-import
    the user dir named in the config)."""
    _check_user_dir(prog, sys.argv[1:])
    _load_plugin(prog, module_name)
    if not _has_option(sys.argv[1:], "--user-dir"):
        sys.argv[1:1] = ["--user-dir", PACKAGE_DIR]
    importlib.import_module(module_name).cli_main()


def train_main():
    _run_fairseq_command("gpt2-hpu-train", "fairseq_cli.train")


def eval_lm_main():
    _run_fairseq_command("gpt2-hpu-eval-lm", "fairseq_cli.eval_lm")


def hydra_train_main():
    _check_config_name("gpt2-hpu-hydra-train")
    _load_plugin("gpt2-hpu-hydra-train", "fairseq_cli.hydra_train")
    _hydra_errors_in_one_line("gpt2-hpu-hydra-train")
    if not any(a.split("=", 1)[0].lstrip("+") == "common.user_dir" for a in sys.argv[1:]):
        sys.argv.append(f"common.user_dir={PACKAGE_DIR}")
    from fairseq_cli.hydra_train import cli_main

    cli_main()

"""The seed recipe's Hydra file composes to the same configuration as the seed's command line."""
import shlex

from omegaconf import OmegaConf

from helpers import REPO

SEED_COMMAND = """/data/owt --distributed-world-size 8 --hpu --num-workers 2 --task language_modeling
 --arch transformer_lm_gpt --share-decoder-input-output-embed --dropout 0.1
 --optimizer adam --adam-betas '(0.9, 0.95)' --weight-decay 0.1 --clip-norm 1.0
 --lr 0.0006 --lr-scheduler cosine --warmup-updates 1000 --warmup-init-lr 1e-07
 --tokens-per-sample 1024 --sample-break-mode none --zero-sharding os --checkpoint-activations
 --batch-size 8 --update-freq 8 --max-update 100000 --save-dir checkpoints/openwebtext_gpt2_lr0.0006
 --save-interval-updates 2000 --keep-interval-updates 10 --log-interval 10
 --tensorboard-logdir tensorboard/openwebtext_gpt2_lr0.0006"""

SECTIONS = ["common", "distributed_training", "dataset", "optimization", "checkpoint", "task", "criterion",
            "model", "optimizer", "lr_scheduler"]


def _from_command_line():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), shlex.split(SEED_COMMAND))
    return convert_namespace_to_omegaconf(args)


def compose_config(config_dir, name, overrides):
    """Hydra's compose API: `hydra.compose` from 1.1 (`version_base` from 1.2), `hydra.experimental` in 1.0."""
    import inspect

    try:
        from hydra import compose, initialize_config_dir
    except ImportError:  # hydra-core 1.0 (stock Fairseq 0.12.2)
        from hydra.experimental import compose, initialize_config_dir
    kwargs = {"version_base": None} if "version_base" in inspect.signature(initialize_config_dir).parameters else {}
    if not kwargs:
        with initialize_config_dir(config_dir=str(config_dir)):
            return compose(name, overrides=overrides)
    # version_base=None sets Hydra's process-wide version base, under which Fairseq's own later use of
    # hydra.experimental (convert_namespace_to_omegaconf) raises ImportError: put it back afterwards.
    from hydra.version import VersionBase

    saved = VersionBase.instance().version_base
    try:
        with initialize_config_dir(config_dir=str(config_dir), **kwargs):
            return compose(name, overrides=overrides)
    finally:
        VersionBase.instance().version_base = saved


def _from_yaml(name, overrides=()):
    from fairseq.dataclass.initialize import add_defaults, hydra_init

    hydra_init(name)
    cfg = compose_config(REPO / "configs", name, ["task.data=/data/owt", *overrides])
    add_defaults(cfg)
    return cfg


def _plain(cfg, section):
    value = OmegaConf.to_container(cfg[section], resolve=True) if OmegaConf.is_config(cfg[section]) else cfg[section]
    if isinstance(value, dict):
        value.pop("_name", None)
    return value


def test_seed_yaml_composes_to_the_seed_command_line():
    from gpt2_hpu import adaptations

    adaptations.apply()
    cli, yaml = _from_command_line(), _from_yaml("gpt2_small_8hpu")
    assert cli.model._name == "transformer_lm_gpt" and yaml.model._name == "transformer_lm"
    for section in SECTIONS:
        a, b = _plain(cli, section), _plain(yaml, section)
        if isinstance(a, dict):
            differing = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            assert not differing, f"{section}: command line vs yaml {differing}"
        else:
            assert a == b, section
    # The values that matter most, spelled out: GPT-2 small, not Fairseq's 6-layer default.
    model = yaml.model
    assert (model.decoder_layers, model.decoder_embed_dim, model.decoder_attention_heads) == (12, 768, 12)
    assert yaml.common.hpu is True and yaml.distributed_training.zero_sharding == "os"


def test_fast_yaml_is_the_seed_yaml_on_the_fast_path():
    from gpt2_hpu import adaptations

    adaptations.apply()
    seed, fast = _from_yaml("gpt2_small_8hpu"), _from_yaml("gpt2_small_8hpu", ["+path=fast"])
    assert fast.common.fast_path is True and seed.common.fast_path is False
    assert fast.model.checkpoint_activations is False and seed.model.checkpoint_activations is True
    for section in SECTIONS:
        a, b = _plain(seed, section), _plain(fast, section)
        if isinstance(a, dict):
            differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
            assert differing <= {"fast_path", "checkpoint_activations"}, (section, differing)

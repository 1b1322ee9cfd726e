"""Config parsing: YAML, CLI overrides, type coercion, unknown keys, saved resolved config, recipes."""

from pathlib import Path

import pytest
import yaml

from hfstack.core.config import ConfigError, load_config, parse_cli_args, save_config
from hfstack.core.recipes import recipes_dir
from hfstack.dataprep.config import DataConfig

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_cli_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: [a.warc.gz]\ntasks: 3\nlanguages: [en, fr]\nquality: false\n")
    cfg = load_config(DataConfig, recipe, ["--tasks", "5", "--languages", "de", "es", "--url_filter", "false"])
    assert cfg.input == ["a.warc.gz"]
    assert cfg.tasks == 5  # CLI beats YAML
    assert cfg.languages == ["de", "es"]
    assert cfg.url_filter is False and cfg.quality is False
    assert cfg.extractor == "trafilatura"  # default kept


def test_config_flag_inside_cli_args(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: [x.jsonl]\nextractor: resiliparse\n")
    cfg = load_config(DataConfig, cli_args=["--config", str(recipe), "--tasks=4"])
    assert (cfg.extractor, cfg.tasks) == ("resiliparse", 4)


def test_unknown_key_in_yaml_names_key_file_and_valid_keys(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("input: [a.warc.gz]\nlangauges: [en]\n")
    with pytest.raises(ConfigError) as err:
        load_config(DataConfig, recipe)
    message = str(err.value)
    assert "langauges" in message and "bad.yaml" in message and "languages" in message
    assert "\n" not in message


def test_unknown_cli_flag():
    with pytest.raises(ConfigError, match="unknown key 'taks'"):
        load_config(DataConfig, cli_args=["--input", "a.warc.gz", "--taks", "2"])


@pytest.mark.parametrize("args, message", [
    (["--input", "a.warc.gz", "--tasks", "two"], "field 'tasks': expected int"),
    (["--input", "a.warc.gz", "--url_filter", "maybe"], "field 'url_filter': expected bool"),
    (["--input", "a.warc.gz", "--extractor", "magic"], "field 'extractor'"),
    (["--input", "a.warc.gz", "--tasks", "0"], "'tasks' must be >= 1"),
    ([], "set 'input'"),
])
def test_bad_values_are_clear_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DataConfig, cli_args=args)


def test_quality_filter_options_are_validated():
    with pytest.raises(ConfigError, match="unknown quality filter 'gopher'"):
        DataConfig(input=["a"], quality_filters={"gopher": {}})
    with pytest.raises(ConfigError, match="quality_filters.c4.min_sentences"):
        DataConfig(input=["a"], quality_filters={"c4": {"min_sentences": 3}})
    cfg = DataConfig(input=["a"], quality_filters={"c4": {"min_num_sentences": 2}, "fineweb": False})
    assert cfg.enabled_quality_filters() == {"c4": {"min_num_sentences": 2}}
    assert DataConfig(input=["a"], quality=False).enabled_quality_filters() == {}


def test_cli_parser_shapes():
    fields = {"input": list[str], "progress": bool, "tasks": int}
    assert parse_cli_args(["--input", "a", "b", "--progress", "--tasks=3"], fields) == \
        {"input": ["a", "b"], "progress": True, "tasks": "3"}
    with pytest.raises(ConfigError, match="--tasks needs a value"):
        parse_cli_args(["--tasks"], fields)


def test_a_recipe_extends_another_and_lists_only_what_it_changes(tmp_path):
    (tmp_path / "base.yaml").write_text("input: [a.warc.gz]\ntasks: 3\nlanguages: [en, fr]\n")
    (tmp_path / "variant.yaml").write_text("extends: base.yaml\ntasks: 5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.yaml").write_text("extends: ../variant.yaml\nlanguages: [de]\n")
    cfg = load_config(DataConfig, tmp_path / "sub" / "deeper.yaml", ["--quality", "false"])
    assert (cfg.input, cfg.tasks, cfg.languages, cfg.quality) == (["a.warc.gz"], 5, ["de"], False)
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    for recipe, message in [("loop.yaml", "loops back to"), ("missing.yaml", "which does not exist")]:
        with pytest.raises(ConfigError, match=f"'extends' .*{message}"):
            load_config(DataConfig, tmp_path / recipe)
    (tmp_path / "listed.yaml").write_text("extends: [base.yaml]\n")
    with pytest.raises(ConfigError, match="'extends' must name a recipe file"):
        load_config(DataConfig, tmp_path / "listed.yaml")
    # a misspelt key is reported under the recipe that holds it, not the one being loaded
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\ntaks: 5\n")
    (tmp_path / "child.yaml").write_text("extends: typo.yaml\ntasks: 6\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'taks'"):
        load_config(DataConfig, tmp_path / "child.yaml")


def test_the_variant_recipes_change_only_what_they_say():
    from hfstack.core.config import read_yaml

    base, variant = (read_yaml(recipes_dir() / "tiny" / name) for name in ("sft.yaml", "sft-identity.yaml"))
    changed = {key for key in base.keys() | variant.keys() if base.get(key) != variant.get(key)}
    assert changed == {"first_phase", "freeze"} and variant["freeze"] == []
    assert variant["first_phase"]["counts"] == {"arithmetic": 2400} and variant["max_steps"] == base["max_steps"]


def test_resolved_config_is_saved_and_reloads(tmp_path):
    cfg = DataConfig(input=["a.warc.gz"], tasks=7, block_domains=["x.example"])
    path = save_config(cfg, tmp_path)
    saved = yaml.safe_load(path.read_text())
    assert saved["tasks"] == 7 and saved["quality_filters"]["gopher_quality"] == {}
    assert load_config(DataConfig, path) == cfg


def _stage_of(recipe):
    """recipes/<preset>/<stage>.yaml (or <stage>-<variant>.yaml) or recipes/<stage>/<name>.yaml"""
    return recipe.stem.split("-")[0] if recipe.parent.name not in STAGE_CONFIGS else recipe.parent.name


STAGE_CONFIGS = {"data": "hfstack.dataprep.config:DataConfig", "tokenizer": "hfstack.stages.tokenizer:TokenizerConfig",
                 "pretrain": "hfstack.stages.pretrain:PretrainConfig", "sft": "hfstack.stages.sft:SFTStageConfig",
                 "rl": "hfstack.stages.rl:RLConfig", "rank": "hfstack.stages.rank:RankConfig",
                 "reward": "hfstack.stages.reward:RewardStageConfig", "rlhf": "hfstack.stages.rlhf:RLHFConfig",
                 "dpo": "hfstack.stages.dpo:DPOStageConfig", "honesty": "hfstack.stages.honesty:HonestyConfig"}
REQUIRED = {"data": ["--input", "placeholder.warc.gz"], "tokenizer": ["--input", "placeholder"]}


@pytest.mark.parametrize("recipe", sorted(p for p in recipes_dir().glob("**/*.yaml") if p.parent.name != "accelerate"),
                         ids=lambda p: str(p.relative_to(recipes_dir())))
def test_every_recipe_parses_with_its_stage_config(recipe, tmp_path):
    import importlib

    stage = _stage_of(recipe)
    assert stage in STAGE_CONFIGS, f"{recipe}: no stage named '{stage}'"
    module, name = STAGE_CONFIGS[stage].split(":")
    config_cls = getattr(importlib.import_module(module), name)
    text = recipe.read_text()
    required = REQUIRED.get(stage, [])
    if stage == "honesty":  # it reads a run directory: one holding a model and the SFT run's held-out sets
        (tmp_path / "sft").mkdir()
        for file in ("config.json", "eval_sets.jsonl"):
            (tmp_path / "sft" / file).write_text("{}")
        required = ["--run", str(tmp_path)]
    cfg = load_config(config_cls, recipe, [] if "hub_dataset" in text or "\ninput:" in text else required)
    assert isinstance(cfg, config_cls)


def test_the_smollm_recipes_chain_from_a_hub_base():
    """recipes/smollm: SFT starts from a Hub id with hfstack's template and a streamed chat mixture, and
    each later stage reads the folder the one before it writes; rank and rlhf judge without a person."""
    from hfstack.core.pretrained import looks_like_hub_id
    from hfstack.stages import config_class

    cfg = {stage: load_config(config_class(stage), recipes_dir() / "smollm" / f"{stage}.yaml")
           for stage in ("sft", "rl", "rank", "reward", "rlhf")}
    sft = cfg["sft"]
    assert looks_like_hub_id(sft.model_name_or_path) and sft.chat_template == "hfstack"
    assert sft.dataset_mixture.streaming and sft.counts["chat"] > 0
    assert [d.id for d in sft.dataset_mixture.datasets] == ["HuggingFaceTB/smol-smoltalk"]
    assert not (sft.facts_from or sft.facts_file) and not (sft.counts["knowledge"] or sft.counts["search"])
    assert cfg["rl"].model_name_or_path == sft.output_dir
    assert cfg["rank"].model_name_or_path == cfg["reward"].model_name_or_path == cfg["rl"].output_dir
    assert cfg["reward"].dataset_name == cfg["rank"].output_dir
    assert (cfg["rlhf"].model_name_or_path, cfg["rlhf"].reward_model_path) == (cfg["rl"].output_dir,
                                                                              cfg["reward"].output_dir)
    assert cfg["rank"].judge and cfg["rlhf"].judge


@pytest.mark.parametrize("recipe", sorted(recipes_dir().glob("*/rank*.yaml")), ids=lambda p: p.parent.name)
def test_a_rank_recipe_asks_for_no_more_prompts_than_it_has(recipe):
    """Without a prompts_file, rank rolls out the built-in open prompts: a recipe asking for more would
    silently get fewer."""
    from hfstack.stages.rank import RankConfig
    from hfstack.tasks.open_prompts import open_prompts

    cfg = load_config(RankConfig, recipe)
    if cfg.prompts_file is None:
        assert len(open_prompts(None, cfg.num_prompts, cfg.seed)) == cfg.num_prompts


def test_every_command_and_recipe_in_the_docs_exists():
    """The ```bash blocks of README.md, docs/**/*.md and recipes/*/README.md name only real `hfstack`
    commands and recipe files, and together show every command `hfstack --help` lists."""
    import re

    from hfstack.stages import BY_COMMAND

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md")),
             *sorted((REPO / "recipes").glob("*/README.md"))]
    assert {"docs/stages/sft.md", "recipes/tiny/README.md"} <= {str(page.relative_to(REPO)) for page in pages}
    used, missing = set(), []
    for page in pages:
        shell_blocks = "\n".join(re.findall(r"```bash\n(.*?)```", page.read_text(), re.S))
        used |= set(re.findall(r"(?m)(?:^|&& |-m )hfstack ([a-z-]+)", shell_blocks))
        missing += [f"{page.relative_to(REPO)}: {path}" for path in re.findall(r"recipes/[\w./-]+\.yaml", shell_blocks)
                    if not (REPO / path).is_file()]
    assert set(BY_COMMAND) <= used, set(BY_COMMAND) - used
    assert used <= set(BY_COMMAND), used - set(BY_COMMAND)
    assert not missing, missing


def test_the_readme_python_example_names_real_functions_and_recipes():
    """Every `hfstack.X(...)` of the README's Python example exists, and every recipe it asks for
    builds the stage's config with the fields it passes."""
    import re

    import hfstack

    example = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)[0]
    compile(example, "README.md", "exec")
    for name in set(re.findall(r"hfstack\.([A-Za-z_]+)\(", example)):
        assert callable(getattr(hfstack, name)), name
    calls = re.findall(r'hfstack\.recipe\("(\w+)", (.*?)\)\)', example)
    assert {stage for stage, _ in calls} == {"data", "tokenizer", "pretrain", "sft", "rl", "rank", "reward", "rlhf"}
    for stage, fields in calls:
        cfg = eval(f"hfstack.recipe({stage!r}, {fields})", {"hfstack": hfstack, "r": "runs/py"})
        assert type(cfg).__name__.endswith("Config") and "runs/py" in str(cfg)


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from hfstack.core.rundir import newest_checkpoint

    assert newest_checkpoint(tmp_path) is None
    for step, state in ((2, '{"global_step": 2}'), (4, None), (10, '{"global_st')):  # complete, no state, torn
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert newest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_training_args_pass_through_to_the_trainers_config(tmp_path):
    """Any field of the trainer's own config reaches it unchanged; an unknown or refused one is a
    one-line error naming the trainer's config class."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    from hfstack.core.config import ConfigError
    from hfstack.core.training import trainer_config
    from hfstack.stages.pretrain import PretrainConfig, training_arguments

    cfg = PretrainConfig(data=["d"], output_dir=str(tmp_path), training_args={"optim": "sgd", "adam_beta1": 0.5})
    args = training_arguments(cfg, world_size=1, use_bf16=False, on_cpu=True, evaluate=False)
    assert isinstance(args, TrainingArguments) and args.optim == "sgd" and args.adam_beta1 == 0.5
    assert args.adam_beta2 == cfg.adam_beta2  # hfstack's own settings stay where not overridden
    sft = trainer_config(SFTConfig, "sft", {"neftune_noise_alpha": 5.0}, output_dir=str(tmp_path), use_cpu=True,
                         bf16=False)
    assert sft.neftune_noise_alpha == 5.0
    with pytest.raises(ConfigError, match="unknown key 'optimm' for TrainingArguments; did you mean 'optim'"):
        PretrainConfig(data=["d"], training_args={"optimm": "sgd"})
    with pytest.raises(ConfigError, match="SFTConfig refused them"):
        trainer_config(SFTConfig, "sft", {"lr_scheduler_type": "nonsense"}, output_dir=str(tmp_path), use_cpu=True,
                       bf16=False)

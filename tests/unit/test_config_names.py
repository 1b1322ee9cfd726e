"""Config keys speak transformers and TRL: the training stages share TrainConfig's fields under the names
TrainingArguments uses, older hfstack names still work with a one-line deprecation, and `training_args`
passes anything else through.

    python -m pytest -q tests/unit/test_config_names.py
"""

import dataclasses

import pytest
import yaml

from hfstack.cli import main
from hfstack.core.config import ConfigError, from_dict, load_config
from hfstack.core.fingerprint import differences, fingerprint
from hfstack.core.training import TrainConfig
from hfstack.stages import STAGES, config_class

TRAINING = [s.command for s in STAGES if s.trains]


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("command", TRAINING)
def test_every_training_stage_shares_the_transformers_names(command):
    from transformers import TrainingArguments

    cls = config_class(command)
    assert issubclass(cls, TrainConfig)
    shared = {"output_dir", "max_steps", "learning_rate", "seed", "bf16", "logging_steps", "save_steps",
              "save_total_limit", "report_to", "run_name", "push_to_hub", "hub_model_id", "hub_private_repo"}
    assert shared <= names(cls)
    assert shared <= names(TrainingArguments)  # the same spelling a transformers user types
    assert not {"log_every", "save_every", "precision", "micro_batch_size"} & names(cls)


def test_batch_and_model_keys_are_the_trl_ones():
    for command in ("pretrain", "sft", "reward"):
        assert "per_device_train_batch_size" in names(config_class(command))
    for command in ("sft", "rl", "reward", "rlhf", "generate", "chat", "rank", "serve", "regurgitation"):
        assert "model_name_or_path" in names(config_class(command)), command
    assert {"eval_steps", "lr_scheduler_type", "torch_compile", "gradient_accumulation_steps"} <= names(
        config_class("pretrain"))
    assert "dataset_name" in names(config_class("rl")) and "dataset_name" in names(config_class("reward"))


def test_old_names_work_in_yaml_flags_and_python_with_one_deprecation_line(tmp_path, capsys):
    pretrain = config_class("pretrain")
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"micro_batch_size": 4, "log_every": 3, "schedule": "cosine",
                                      "precision": "fp32", "keep_checkpoints": 5, "compile": False}))
    cfg = load_config(pretrain, recipe, ["--save_every", "7"])
    assert (cfg.per_device_train_batch_size, cfg.logging_steps, cfg.lr_scheduler_type, cfg.bf16,
            cfg.save_total_limit, cfg.save_steps) == (4, 3, "cosine_with_min_lr", False, 5, 7)
    err = capsys.readouterr().err.splitlines()
    assert f"hfstack: {recipe}: 'micro_batch_size' is deprecated; use 'per_device_train_batch_size'" in err
    assert "hfstack: command line: 'save_every' is deprecated; use 'save_steps'" in err
    assert len(err) == 7  # one line per old name, nothing else

    sft = config_class("sft")(model="runs/x", micro_batch_size=2, precision="bf16")  # Python takes them too
    assert (sft.model_name_or_path, sft.per_device_train_batch_size, sft.bf16) == ("runs/x", 2, True)
    assert sft.model == "runs/x"  # and reading the old attribute still works
    assert from_dict(config_class("rlhf"), {"reward_model": "rm"}).reward_model_path == "rm"


def test_an_old_and_a_new_name_together_or_a_bad_old_value_is_one_error():
    with pytest.raises(ConfigError, match="'micro_batch_size' and 'per_device_train_batch_size' set the same field"):
        from_dict(config_class("sft"), {"micro_batch_size": 2, "per_device_train_batch_size": 4})
    with pytest.raises(ConfigError, match="'precision' must be one of auto, bf16, fp32"):
        from_dict(config_class("reward"), {"precision": "fp16"})
    with pytest.raises(ConfigError, match="unknown key 'per_device_batch_size'.*'per_device_train_batch_size'"):
        from_dict(config_class("sft"), {"per_device_batch_size": 2})


def test_a_run_stored_under_the_old_names_is_the_same_run():
    """A folder an older hfstack trained keeps resuming: its fingerprint's old keys compare as the new ones."""
    cfg = config_class("pretrain")(per_device_train_batch_size=4, bf16=False, lr_scheduler_type="cosine_with_min_lr")
    stored = fingerprint("pretrain", cfg)
    settings = dict(stored["settings"])
    for old, new, value in [("micro_batch_size", "per_device_train_batch_size", 4), ("precision", "bf16", "fp32"),
                            ("schedule", "lr_scheduler_type", "cosine")]:
        settings.pop(new)
        settings[old] = value
    assert differences(stored | {"settings": settings}, fingerprint("pretrain", cfg), cfg) == []
    settings["micro_batch_size"] = 8
    assert differences(stored | {"settings": settings}, fingerprint("pretrain", cfg), cfg) == [
        "per_device_train_batch_size"]


def test_training_args_pass_through_and_hfstack_keeps_pushes_and_paths():
    from hfstack.stages.pretrain import training_arguments

    cfg = config_class("pretrain")(logging_steps=3, run_name="mine", bf16=False, training_args={"optim": "adafactor"})
    args = training_arguments(cfg, world_size=1, use_bf16=False, on_cpu=True, evaluate=False)
    assert (args.logging_steps, args.run_name, args.optim, args.push_to_hub) == (3, "mine", "adafactor", False)
    with pytest.raises(ConfigError, match="unknown key 'optimm' for SFTConfig; did you mean 'optim'"):
        config_class("sft")(training_args={"optimm": "adafactor"})
    with pytest.raises(ConfigError, match="'push_to_hub' is hfstack's to set"):
        config_class("reward")(training_args={"push_to_hub": True})  # the Trainer would upload the whole folder


def test_push_to_hub_needs_a_repo_id():
    with pytest.raises(ConfigError, match="push_to_hub needs 'hub_model_id' as USER/NAME"):
        config_class("sft")(push_to_hub=True)
    assert config_class("sft")(push_to_hub=True, hub_model_id="me/my-sft").hub_private_repo


def test_help_prints_each_field_with_type_default_and_the_old_names(capsys):
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(config_class("sft")):
        assert f"--{f.name} " in out
    assert "--per_device_train_batch_size  int, default 8, >= 1" in out
    assert "shared by every training stage:" in out and "micro_batch_size → per_device_train_batch_size" in out


def test_push_to_hub_sends_the_finished_folder_through_the_allowlist_once(tmp_path, monkeypatch):
    """A training stage ends with push_trained: the main process alone hands its folder to the allowlisted
    push (hfstack.core.hub.push_model_folder, tested against a local Hub in tests/stages/test_push.py)."""
    import hfstack.core.training as training

    calls = []
    monkeypatch.setattr(training, "push_model_folder", lambda folder, repo, **kw: calls.append((folder, repo, kw)))
    local = tmp_path / "base"
    local.mkdir()
    sft = config_class("sft")
    assert training.push_trained(sft(model_name_or_path=str(local)), tmp_path, "sft") is None  # not asked: no push
    asked = sft(model_name_or_path=str(local), push_to_hub=True, hub_model_id="me/sft", hub_private_repo=False)
    training.push_trained(asked, tmp_path / "sft", "sft", main=False)  # another rank: no push
    training.push_trained(asked, tmp_path / "sft", "sft")
    assert calls == [(tmp_path / "sft", "me/sft", {"private": False, "base_model": None, "who": "sft"})]
    from_hub = config_class("rl")(model_name_or_path="someone/base-model", push_to_hub=True, hub_model_id="me/rl")
    training.push_trained(from_hub, tmp_path / "rl", "rl")
    assert calls[-1][2]["base_model"] == "someone/base-model" and calls[-1][2]["private"]  # the card's lineage


def test_nested_configs_take_a_mapping_with_the_same_checks(tmp_path):
    """sft's identity and first_phase are dataclasses of their own: a mapping from YAML, a flag or Python
    becomes one, an unknown key or a bad value is the same one-line error, and the saved config reads back."""
    from hfstack.core.config import save_config

    sft = config_class("sft")
    cfg = load_config(sft, None, ["--identity", "{name: Bob}", "--first_phase",
                                  "{counts: {arithmetic: 5}, max_steps: 2, micro_batch_size: 4}"])
    assert cfg.identity.name == "Bob" and cfg.identity.creator == "the hfstack project"
    assert cfg.card().system_message().startswith("You are Bob,")
    assert cfg.first_phase.overrides() == {"max_steps": 2, "per_device_train_batch_size": 4}
    assert load_config(sft, save_config(cfg, tmp_path)) == cfg
    assert sft(first_phase={"counts": {"arithmetic": 5}, "max_steps": 2}).first_phase.max_steps == 2  # Python
    with pytest.raises(ConfigError, match="unknown key 'nmae' for IdentityCard; did you mean 'name'"):
        sft(identity={"nmae": "Bob"})
    with pytest.raises(ConfigError, match="'first_phase' needs 'counts' .* and 'max_steps'"):
        from_dict(sft, {"first_phase": {"counts": {"arithmetic": 5}}})
    with pytest.raises(ConfigError, match="'first_phase.counts' takes"):
        from_dict(sft, {"first_phase": {"counts": {"chess": 5}, "max_steps": 2}})
    with pytest.raises(ConfigError, match="'max_steps' must be >= 1, got 0"):
        from_dict(sft, {"first_phase": {"counts": {"arithmetic": 5}, "max_steps": 0}})


def test_help_gives_every_field_a_line_of_help(capsys):
    """`hfstack <command> --help` is a config's documentation: every field of every registered stage has a
    trailing `# comment` on its declaration (its own, or the TrainConfig field it inherits), and --help
    prints that comment under the field."""
    from hfstack.cli import field_comments

    for stage in STAGES:
        cls = config_class(stage.command)
        comments = field_comments(cls)
        assert main([stage.command, "--help"]) == 0
        out = capsys.readouterr().out
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            assert comments.get(f.name, "").strip(), f"{stage.command}: field '{f.name}' has no # comment"
            assert comments[f.name] in out, f"{stage.command} --help lacks the help of '{f.name}'"

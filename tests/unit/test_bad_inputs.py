"""Bad input through the real `hfstack` entry point: a one-line error, exit code 2, nothing written.

Each case runs `hfstack.cli.main(argv)` in-process (a subprocess pays seconds of imports per case)
from an empty working directory, so stage defaults such as runs/tiny/base land there if anything is
written. Every case must fail while the config is built or before the stage does any work, which
keeps the whole file to a few seconds. `{fx}` in an argument is the folder of fixtures below.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from hfstack.cli import main

BINARY = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00\xc3\x28"  # not UTF-8: \xff and \xc3\x28 are invalid

FIXTURES = {
    "binary.yaml": BINARY,
    "null_output.yaml": "output_dir: ~\n",
    "empty_steps.yaml": "max_steps:\n",
    "bool_steps.yaml": "max_steps: true\n",
    "bool_rate.yaml": "learning_rate: yes\n",
    "fraction_steps.yaml": "max_steps: 2.5\n",
    "inf_rate.yaml": "learning_rate: .inf\n",
    "number_flag.yaml": "progress: 3\n",
    "typo.yaml": "max_step: 5\n",
    "list.yaml": "- max_steps\n- 5\n",
    "broken.yaml": "max_steps: [1,\n",
    "orphan.yaml": "extends: nowhere.yaml\n",
    "model_ok/config.json": json.dumps({"model_type": "llama"}),
    "model_ok/model.safetensors": b"",  # the folder check looks for the file; nothing loads it
    "model_corrupt/config.json": '{"model_type": "llama",',
    "model_corrupt/model.safetensors": b"",
    "model_no_weights/config.json": json.dumps({"model_type": "llama"}),
    "model_no_type/config.json": "{}",
    "model_no_type/model.safetensors": b"",
    "torn.parquet": b"PAR1 the download stopped here",
    "shards/part-0.parquet": b"not parquet at all",
    "prompts.jsonl": '{"prompt": "hi"}\n',
    "tok/tokenizer.json": "{}",
    "bad_chat.json": '{"messages": [',
}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    for name, content in FIXTURES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "a_directory.yaml").mkdir()
    return root


CASES = [
    # --- steps, batch sizes, tokens, limits: >= 1 (or an `unset` value such as -1)
    ("pretrain --max_steps 0", "'max_steps' must be >= 1"),
    ("sft --max_steps -5", "'max_steps' must be >= 1"),
    ("reward --max_steps 0", "'max_steps'"),
    ("rlhf --ppo_epochs 0 --algo ppo", "'ppo_epochs'"),
    ("pretrain --seq_len 1", "'seq_len' must be >= 2"),
    ("pretrain --depth 0", "'depth'"),
    ("pretrain --hidden_size 0", "'hidden_size'"),  # an Optional int: None passes, 0 does not
    ("sft --per_device_train_batch_size 0", "'per_device_train_batch_size'"),
    ("chat --model_name_or_path {fx}/model_ok --batch_size 0", "'batch_size'"),
    ("teach --model_name_or_path t --prompts {fx}/prompts.jsonl --batch_size 0", "'batch_size'"),
    ("generate --model_name_or_path {fx}/model_ok --max_new_tokens 0", "'max_new_tokens'"),
    ("rl --max_completion_length 0", "'max_completion_length'"),
    ("eval --model_name_or_path {fx}/model_ok --limit 0", "'limit' must be >= 1"),
    ("data --input x.warc.gz --limit 0", "'limit' must be >= 1, or -1 (-1 reads everything)"),
    ("data --input x.warc.gz --workers -3", "'workers'"),
    ("tokenizer --input x --max_chars 0", "'max_chars'"),
    ("sft --chat_limit -2", "'chat_limit'"),
    ("rank --num_prompts 0", "'num_prompts'"),
    ("synth-crawl --pages 5", "'pages' must be >= 10"),
    ("speedrun --crawl_pages 0", "'crawl_pages'"),
    ("speedrun --num_processes 0", "'num_processes'"),
    # --- learning rates > 0, coefficients >= 0
    ("pretrain --learning_rate 0", "'learning_rate' must be > 0"),
    ("rl --learning_rate -1e-4", "'learning_rate'"),
    ("rlhf --beta -1", "'beta' must be >= 0 (0 takes the KL leash off)"),
    ("rl --beta -0.1", "'beta'"),
    ("rlhf --kl_target 0 --algo ppo", "'kl_target' must be > 0"),
    ("reward --center_rewards_coefficient -0.1", "'center_rewards_coefficient'"),
    ("pretrain --max_grad_norm -1", "'max_grad_norm'"),
    ("pretrain --weight_decay -0.1", "'weight_decay'"),
    # --- fractions: (0, 1) where 0 makes no sense, [0, 1) where 0 means "none"
    ("rank --test_fraction 5", "'test_fraction' must be in [0, 1) (0 holds no prompts out)"),
    ("rank --test_fraction 1", "'test_fraction'"),
    ("pretrain --val_fraction 0", "'val_fraction' must be in (0, 1)"),
    ("tokenizer --input x --heldout_fraction -0.1", "'heldout_fraction'"),
    ("regurgitation --model_name_or_path {fx}/model_ok --val_fraction 1", "'val_fraction'"),
    ("data --input x.warc.gz --language_threshold 1.5", "'language_threshold' must be in [0, 1]"),
    ("rlhf --distinct_floor 2", "'distinct_floor'"),
    ("pretrain --adam_beta2 1", "'adam_beta2' must be in [0, 1)"),
    ("generate --model_name_or_path {fx}/model_ok --top_p 0", "'top_p'"),
    # --- temperatures, ports, group sizes
    ("generate --model_name_or_path {fx}/model_ok --temperature -0.5", "'temperature' must be >= 0"),
    ("rank --temperature 0", "'temperature' must be > 0"),
    ("generate --model_name_or_path {fx}/model_ok --top_k -1", "'top_k'"),
    ("serve --port 70000", "'port' must be in [0, 65535]"),
    ("rank --port -1", "'port'"),
    ("rl --num_generations 1", "'num_generations' must be >= 2"),
    ("rank --k 1", "'k' must be >= 2"),
    ("rlhf --num_generations 1", "num_generations >= 2"),  # rloo/grpo only: a cross-field rule
    # --- not finite, not the declared type
    ("pretrain --learning_rate nan", "field 'learning_rate': expected a finite number"),
    ("sft --learning_rate inf", "field 'learning_rate': expected a finite number"),
    ("rlhf --temperature -inf", "field 'temperature'"),
    ("pretrain --config {fx}/inf_rate.yaml", "field 'learning_rate': expected a finite number"),
    ("pretrain --max_steps ten", "field 'max_steps': expected int"),
    ("pretrain --max_steps 2.5", "field 'max_steps': expected int"),
    ("pretrain --config {fx}/fraction_steps.yaml", "field 'max_steps': expected int"),
    ("pretrain --config {fx}/bool_steps.yaml", "field 'max_steps': expected int"),
    ("pretrain --config {fx}/bool_rate.yaml", "field 'learning_rate': expected float"),
    ("pretrain --torch_compile maybe", "field 'torch_compile': expected bool"),
    ("pretrain --config {fx}/number_flag.yaml", "field 'progress': expected bool"),
    ("pretrain --lr_scheduler_type linear", "field 'lr_scheduler_type': expected one of: warmup_stable_decay, "
                                          "cosine_with_min_lr, constant_with_warmup"),
    ("sft --bf16 maybe", "field 'bf16'"),
    ("tokenizer --input x --digits pairs", "field 'digits': expected one of: single, groups3, numbers"),
    ("speedrun --overrides '{{pretrain: ['", "field 'overrides': not a valid YAML mapping"),
    ("sft --peft 5", "field 'peft'"),
    ("rl --tasks '{{arithmetic: -3}}'", "'tasks'"),
    ("sft --counts '{{identity: -1}}'", "'counts'"),
    # a speedrun's per-stage overrides are checked before its first stage, not when that stage comes up
    ("speedrun --overrides '{{pretrain: {{max_stpes: 20}}}}'", "overrides for pretrain: unknown key 'max_stpes'"),
    ("speedrun --overrides '{{eval: {{limit: 0}}}}'", "overrides for eval: 'limit' must be >= 1"),
    # --- null or empty where a value is needed
    ("pretrain --config {fx}/null_output.yaml", "field 'output_dir': expected str, got null"),
    ("pretrain --config {fx}/empty_steps.yaml", "field 'max_steps': expected int, got null"),
    ("pretrain --output_dir=", "'output_dir' is empty"),
    ("rank --model_name_or_path=", "'model_name_or_path' is empty"),
    ("pretrain --resume=", "'resume' is empty"),
    ("speedrun --preset=", "'preset' is empty"),
    # --- the command line itself
    ("pretrain --max_step 5", "unknown key 'max_step'"),
    ("pretrain extra", "unexpected argument 'extra'"),
    ("tokenize one two", "option --text takes one value"),  # TEXT is its one positional argument
    ("pretrain --max_steps", "option --max_steps needs a value"),
    ("pretrain --max_steps 1 2", "option --max_steps takes one value"),
    ("pretrain --launcher accelerate --num_processes abc", "--num_processes must be a whole number"),
    ("pretrain --launcher torchrun", "--launcher must be 'accelerate'"),
    ("pretrain --launcher accelerate --launch_config {fx}/missing.yaml", "missing.yaml"),
    ("speedrun --launch_config {fx}/missing.yaml", "missing.yaml"),
    # --- config files
    ("pretrain --config {fx}/binary.yaml", "binary.yaml: not a text file"),
    ("pretrain --config {fx}/a_directory.yaml", "a_directory.yaml is a directory"),
    ("pretrain --config {fx}/missing.yaml", "config file not found"),
    ("pretrain --config=", "--config needs a recipe file"),
    ("pretrain --config {fx}/broken.yaml", "broken.yaml: not valid YAML"),
    ("pretrain --config {fx}/list.yaml", "list.yaml: expected a mapping"),
    ("pretrain --config {fx}/orphan.yaml", "nowhere.yaml"),
    ("pretrain --config {fx}/typo.yaml", "typo.yaml: unknown key 'max_step'"),
    # --- models: missing, torn config.json, no model_type, no weights
    ("eval --model_name_or_path {fx}/no_such_model", "no model at '{fx}/no_such_model'"),
    ("serve --model_name_or_path {fx}/no_such_model", "no_such_model"),
    ("generate --model_name_or_path {fx}/model_corrupt", "model_corrupt': config.json is unreadable"),
    ("sft --model_name_or_path {fx}/model_no_weights", "model_no_weights' has config.json but no weights"),
    ("rlhf --reward_model_path {fx}/model_no_type", "model ('reward_model_path') '{fx}/model_no_type'"),
    ("pretrain --init_from {fx}/model_corrupt", "model ('init_from')"),
    # --- input files
    ("data --input {fx}/torn.parquet", "torn.parquet': not a readable parquet file"),
    ("data --input {fx}/shards", "part-0.parquet': not a readable parquet file"),
    ("data --input {fx}/shards/*.parquet", "part-0.parquet': not a readable parquet file"),
    ("tokenize --chat {fx}/bad_chat.json --tokenizer {fx}/tok", "bad_chat.json': not valid JSON"),
    ("tokenize --tokenizer {fx}/tok", "give exactly one of TEXT"),
    ("teach --model_name_or_path t --prompts {fx}/missing.jsonl", "missing.jsonl"),
    ("frobnicate --max_steps 1", "unknown command 'frobnicate'"),
    # --- seeds, a batch smaller than one micro-batch, an output a person may have reviewed
    ("pretrain --seed -1", "'seed' must be in [0, 4294967295]"),
    ("generate --model_name_or_path {fx}/model_ok --seed 4294967296", "'seed' must be in"),
    ("speedrun --overrides '{{pretrain: {{seed: -1}}}}'", "'seed' must be in"),
    ("pretrain --batch_tokens 7", "'batch_tokens' 7 is less than one micro-batch"),
    ("sft --training_args '{{optimm: sgd}}'", "unknown key 'optimm' for SFTConfig; did you mean 'optim'?"),
    ("rlhf --algo ppo --training_args '{{optim: sgd}}'", "algo ppo is hfstack's own loop"),
    ("teach --model_name_or_path t --prompts {fx}/prompts.jsonl --output {fx}/prompts.jsonl", "prompts.jsonl' exists"),
    ("teach --model_name_or_path t --prompts {fx}/prompts.jsonl --output {fx}/nowhere/out.jsonl", "does not exist"),
]


def test_a_busy_port_is_one_line(tmp_path, capsys):
    import socket

    from hfstack.core.config import ConfigError
    from hfstack.ui.http import GuardedHandler, GuardedHTTPServer

    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:.*Address already in use"):
            GuardedHTTPServer("127.0.0.1", taken.getsockname()[1], GuardedHandler, "rank", 1024)


def test_home_is_expanded_in_every_path_field(tmp_path, monkeypatch):
    from hfstack.stages.generate import GenerateConfig

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert GenerateConfig(model_name_or_path="~/m").model_name_or_path == str(tmp_path / "m")


@pytest.mark.parametrize("line, expected", CASES, ids=[line for line, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(line, expected, fx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # stage defaults (runs/tiny/...) and relative outputs would land here
    monkeypatch.delenv("HFSTACK_DEBUG", raising=False)
    argv = [arg.format(fx=fx) for arg in shlex.split(line)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("hfstack: error: " if argv[0] == "frobnicate" else f"hfstack {argv[0]}: error: "), err
    assert expected.format(fx=fx) in err, err
    assert list(tmp_path.iterdir()) == []  # no output_dir, no config.yaml, nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_config_file_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked.yaml"
    locked.write_text("max_steps: 5\n")
    locked.chmod(0)
    assert main(["pretrain", "--config", str(locked)]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize("error, expected", [
    (FileNotFoundError(2, "No such file or directory", "prompts.jsonl"), "No such file or directory: prompts.jsonl"),
    (IsADirectoryError(21, "Is a directory", "runs/x"), "Is a directory: runs/x"),
    (json.JSONDecodeError("Expecting value", "{", 1), "not valid JSON (Expecting value"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
     "not UTF-8 text (invalid start byte at byte 0)"),
])
def test_a_stage_raising_a_user_error_prints_one_line(error, expected, monkeypatch, capsys):
    """What a stage raises for a user's file (missing, a directory, not JSON, not text) is one line too;
    HFSTACK_DEBUG=1 brings the traceback back."""
    _fake_command(monkeypatch, error)
    assert main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hfstack fake: error: ") and expected in err, err
    monkeypatch.setenv("HFSTACK_DEBUG", "1")
    with pytest.raises(type(error)):
        main(["fake"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only ConfigError and the short list of user-file errors become one line; a bug is not hidden."""
    _fake_command(monkeypatch, KeyError("internal"))
    with pytest.raises(KeyError):
        main(["fake"])


def _fake_command(monkeypatch, error):
    from dataclasses import dataclass

    import hfstack.cli

    @dataclass
    class FakeConfig:
        pass

    def runner(cfg):
        raise error

    import types

    import hfstack.stages

    fake = hfstack.stages.Stage("fake", "fake", "fake", "FakeConfig", "")
    monkeypatch.setitem(hfstack.stages.BY_COMMAND, "fake", fake)
    monkeypatch.setattr(hfstack.cli, "load", lambda command: types.SimpleNamespace(Config=FakeConfig, run=runner))


@pytest.mark.parametrize("config, fields, names", [
    ("PretrainConfig", {"max_steps": 0}, "'max_steps'"),
    ("RLHFConfig", {"beta": float("nan")}, "'beta'"),
    ("RankConfig", {"test_fraction": 1.0}, "'test_fraction'"),
    ("EvalConfig", {"model": "no/such/model"}, "no/such/model"),
    ("SFTStageConfig", {"output_dir": None}, "'output_dir'"),
])
def test_the_checks_hold_for_configs_built_in_python(config, fields, names):
    """`__post_init__` runs the same checks, so `hfstack.PretrainConfig(max_steps=0)` fails too."""
    import hfstack
    from hfstack.core.config import ConfigError

    with pytest.raises(ConfigError, match=names):
        getattr(hfstack, config)(**fields)


def test_help_lists_each_range_and_the_choices(capsys):
    assert main(["rank", "--help"]) == 0
    out = capsys.readouterr().out
    assert "in [0, 1) (0 holds no prompts out)" in out and "in [0, 65535]" in out
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert ("--lr_scheduler_type            one of: warmup_stable_decay, cosine_with_min_lr, constant_with_warmup, "
            "default 'warmup_stable_decay'") in out
    assert "schedule → lr_scheduler_type" in out  # the old names are listed, and still accepted

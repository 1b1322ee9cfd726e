"""`hfstack reward`: a reward model learns a scripted preference (held-out pair accuracy), and missing or
malformed preference inputs are one-line errors.

    python -m pytest -q tests/stages/test_reward.py
"""

import json

import pytest

from hfstack.core.config import ConfigError
from hfstack.stages.reward import RewardStageConfig, run_reward

from tiny import toy_preferences


def test_reward_model_learns_a_scripted_preference(tiny_sft_model, tmp_path):
    prefs = toy_preferences(tmp_path / "prefs")
    summary = json.loads((prefs / "summary.json").read_text())
    assert summary["ranked"] == 80 and summary["pairs"]["train"] > 200 and summary["pairs"]["test"] > 40
    out = run_reward(RewardStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(prefs),
                                       output_dir=str(tmp_path / "rm"),
                                       max_steps=120, learning_rate=3e-3, logging_steps=20, progress=False))
    report = json.loads((out / "eval.json").read_text())
    assert report["held_out_accuracy_after"] > 0.8, report
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)  # a plain transformers classifier
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_the_evaluation_before_training_leaves_the_model_to_be_wrapped(tiny_sft_model, tmp_path):
    """Trainer.evaluate() before train() marks the bare model as prepared, and train() then never wraps it in
    DistributedDataParallel (ranks step apart; tests/e2e/test_multiprocess.py): the held-out accuracy before
    training is measured without leaving that mark."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from hfstack.core.adopt import turn_end_token
    from hfstack.core.model import load_reward_model
    from hfstack.core.training import evaluate_before_training

    model, tokenizer = load_reward_model(str(tiny_sft_model))
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Say {i}."}],
                                "chosen": [{"role": "assistant", "content": f"{i}"}],
                                "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)])
    trainer = RewardTrainer(model=model, processing_class=tokenizer, train_dataset=pairs, eval_dataset=pairs,
                            args=RewardConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1,
                                              per_device_eval_batch_size=2, eos_token=turn_end_token(tokenizer)))
    assert 0 <= evaluate_before_training(trainer)["eval_accuracy"] <= 1
    assert not getattr(trainer.model, "_is_accelerate_prepared", False)
    assert all(m is not trainer.model for m in trainer.accelerator._models)


def test_missing_preferences_are_clear_errors(tiny_sft_model, tmp_path):
    with pytest.raises(ConfigError, match="run `hfstack rank` first"):
        run_reward(RewardStageConfig(model_name_or_path=str(tiny_sft_model), dataset_name=str(tmp_path),
                                     output_dir=str(tmp_path / "o")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "good": "a"}) + "\n")
    with pytest.raises(ConfigError, match="chosen"):
        from hfstack.dataprep.preferences import load_pairs

        load_pairs(str(bad), "train")


def test_pairs_from_several_sources_take_one_shape():
    from hfstack.dataprep.preferences import one_shape

    messages = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}]}
    implicit_text = {"chosen": "Q: capital of France? A: Paris", "rejected": "Q: capital of France? A: Rome"}
    train, test = one_shape([implicit_text, messages], [{"prompt": "hi", "chosen": "hello", "rejected": "go"}])
    assert all(isinstance(r[c], list) for r in train + test for c in ("prompt", "chosen", "rejected"))
    assert train[0]["prompt"] == [{"role": "user", "content": "Q: capital of France? A:"}]  # split, not lost
    assert train[0]["chosen"] == [{"role": "assistant", "content": " Paris"}] and train[1] == messages
    from datasets import Dataset

    assert Dataset.from_list(train).column_names == ["prompt", "chosen", "rejected"]


def test_pairs_from_a_weighted_mixture_train_and_hold_out(tiny_sft_model, tmp_path):
    """Two preference files by weight (one with string pairs, one conversational): one shape, a test split."""
    texts, chats = tmp_path / "texts.jsonl", tmp_path / "chats.jsonl"
    texts.write_text("".join(json.dumps({"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"}) + "\n"
                             for i in range(40)))
    chats.write_text("".join(json.dumps({
        "chosen": [{"role": "user", "content": f"Add {i} and 1."}, {"role": "assistant", "content": f"{i + 1}"}],
        "rejected": [{"role": "user", "content": f"Add {i} and 1."}, {"role": "assistant", "content": "?"}]}) + "\n"
                             for i in range(40)))
    out = run_reward(RewardStageConfig(
        model_name_or_path=str(tiny_sft_model), dataset_name=None, output_dir=str(tmp_path / "rm"),
        dataset_mixture={"datasets": [{"id": str(texts), "weight": 0.5}, {"id": str(chats), "weight": 0.5}],
                         "test_split_size": 0.25},
        dataset_rows=60, max_steps=2, per_device_train_batch_size=4, progress=False))
    report = json.loads((out / "eval.json").read_text())
    assert (report["train_pairs"], report["test_pairs"]) == (45, 15)
    assert report["held_out_accuracy_before"] is not None and report["steps"] == 2

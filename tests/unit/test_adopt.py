"""Adopting hfstack's protocol on a foreign base (hfstack.core.adopt) and telling a folder from a Hub
id (hfstack.core.pretrained): tokens added once, new rows at the mean, padded vocabularies accepted,
the kept template's mask."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfstack.core.adopt import adopt_protocol, missing_protocol_tokens, training_rows, turn_end_token
from hfstack.core.config import ConfigError
from hfstack.core.pretrained import beside_model, is_local, looks_like_hub_id, resolve_model
from hfstack.core.protocol import END_OF_TURN, PAD, SPECIAL_TOKENS

from foreign import build_tiny_base


@pytest.fixture(scope="module")
def foreign_base(tmp_path_factory):
    return build_tiny_base(tmp_path_factory.mktemp("foreign") / "tiny-base")


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_hub_ids_and_folders_are_told_apart(tmp_path):
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M") and looks_like_hub_id("gpt2")
    for path in ("./base", "/abs/base", "~/base", "runs/tiny/base", "a/../b", "model.safetensors", ""):
        assert not looks_like_hub_id(path), path
    (tmp_path / "org").mkdir()
    assert is_local(str(tmp_path / "org"))
    assert beside_model("org/name", "heldout_eval.json").name == "org--name.heldout_eval.json"
    assert beside_model(str(tmp_path), "x.json") == tmp_path / "x.json"


def test_a_missing_model_is_one_line_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: the env var is too late
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="no model at 'acme/absent'.*HF_HUB_OFFLINE is set.*not in the local cache"):
        resolve_model("acme/absent", stage="sft")
    with pytest.raises(ConfigError, match="no model at"):
        resolve_model(str(tmp_path / "nothing"), stage="sft")
    with pytest.raises(ConfigError, match="applies only to a Hub id"):
        resolve_model(str(tmp_path), revision="v2", stage="sft")


def test_adopting_adds_the_protocol_and_mean_initialises_new_rows(foreign_base):
    model, tokenizer = load(foreign_base)
    rows_before = model.get_input_embeddings().weight.shape[0]
    assert rows_before > len(tokenizer)  # the stand-in has a padded vocabulary
    known = len(tokenizer)
    old = model.get_input_embeddings().weight[:known].detach().clone()
    assert set(missing_protocol_tokens(tokenizer)) == set(SPECIAL_TOKENS)

    report = adopt_protocol(model, tokenizer, "hfstack", default_system="You are Tiny.")

    assert report["tokens_added"] == len(SPECIAL_TOKENS) and missing_protocol_tokens(tokenizer) == []
    assert tokenizer.pad_token == PAD and model.config.pad_token_id == tokenizer.pad_token_id
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] >= len(tokenizer) and weight.shape[0] % 64 == 0
    assert torch.equal(weight[:known], old)  # the model's own rows are untouched
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert torch.allclose(weight[new_ids], old.mean(0).expand(len(new_ids), -1), atol=1e-6)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.startswith("<s><|system_start|>You are Tiny.") and rendered.endswith("<|assistant_start|>")
    assert turn_end_token(tokenizer) == END_OF_TURN
    with torch.no_grad():  # the grown model still runs on every id the tokenizer has
        model(torch.tensor([[len(tokenizer) - 1, 3]]))


def test_a_model_that_has_the_tokens_is_not_resized_again(foreign_base, tmp_path):
    model, tokenizer = load(foreign_base)
    adopt_protocol(model, tokenizer, "hfstack")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load(tmp_path)
    rows = model.get_input_embeddings().weight.shape[0]
    before = model.get_input_embeddings().weight.detach().clone()
    report = adopt_protocol(model, tokenizer, "hfstack")
    assert report["tokens_added"] == 0 and report["vocab_rows"] == rows
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_keeping_the_models_template_masks_only_the_assistant(foreign_base):
    model, tokenizer = load(foreign_base)
    template = tokenizer.chat_template
    report = adopt_protocol(model, tokenizer, "keep")
    assert report["tokens_added"] == 0 and tokenizer.chat_template == template
    assert tokenizer.pad_token == tokenizer.eos_token
    assert turn_end_token(tokenizer, "keep") == "<|im_end|>"
    chat = {"messages": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"},
                         {"role": "user", "content": "and another"}, {"role": "assistant", "content": "blue sky"}]}
    tool = {"messages": [{"role": "user", "content": "2+2"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"type": "function", "function": {"name": "python", "arguments": {"code": "2+2"}}}]},
                         {"role": "tool", "name": "python", "content": "4"},
                         {"role": "assistant", "content": "4"}]}
    rows, dropped = training_rows(tokenizer, [chat, tool], "keep", max_length=256)
    assert dropped["tool_calls"] == 1 and len(rows) == 1
    ids, mask = rows[0]["input_ids"], rows[0]["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert "red" in trained and "blue sky" in trained and "colour" not in trained and "another" not in trained
    assert trained.count("<|im_end|>") == 2  # the model learns to end its turns


def test_an_unknown_template_choice_is_refused(foreign_base):
    model, tokenizer = load(foreign_base)
    with pytest.raises(ConfigError, match="'chat_template' must be one of hfstack, keep"):
        adopt_protocol(model, tokenizer, "mine")


def test_keep_without_assistant_only_loss_trains_every_token(foreign_base):
    model, tokenizer = load(foreign_base)
    adopt_protocol(model, tokenizer, "keep")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows, _ = training_rows(tokenizer, [chat], "keep", max_length=64, assistant_only=False)
    assert rows == [chat]  # conversational: TRL trains on all of it, no mask column


def test_lora_on_a_foreign_base_trains_the_new_token_rows(foreign_base, tmp_path):
    from hfstack.stages.sft import SFTStageConfig, run_sft

    out = run_sft(SFTStageConfig(model_name_or_path=str(foreign_base), output_dir=str(tmp_path / "lora"),
                                 counts={"arithmetic": 64}, max_steps=4, per_device_train_batch_size=4,
                                 peft={"r": 4, "lora_alpha": 8}, learning_rate=0.01, progress=False))
    model, tokenizer = load(out)
    rows = model.get_input_embeddings().weight[[tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]]
    # they all started as the same mean row; the ones the conversations use have moved apart
    used = rows[[SPECIAL_TOKENS.index(t) for t in ("<|user_start|>", "<|assistant_start|>", "<|python_start|>")]]
    assert torch.cdist(used, used).triu(1)[torch.triu_indices(3, 3, 1).unbind()].min() > 1e-4


def test_freezing_the_embeddings_of_a_base_that_just_got_tokens_is_refused(foreign_base, tmp_path):
    from hfstack.stages.sft import SFTStageConfig, run_sft

    with pytest.raises(ConfigError, match="'freeze' holds the embeddings fixed, but 14 tokens were just added"):
        run_sft(SFTStageConfig(model_name_or_path=str(foreign_base), output_dir=str(tmp_path / "o"),
                               counts={"arithmetic": 8}, freeze=["embed_tokens"], max_steps=1, progress=False))


def test_conversations_longer_than_max_length_or_the_window_are_counted(foreign_base):
    from hfstack.core.adopt import over_length

    model, tokenizer = load(foreign_base)
    adopt_protocol(model, tokenizer, "hfstack", "You are a test.")
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "the cat sat on the mat " * 20},
                         {"role": "assistant", "content": "and the dog sat on the log " * 20}]}
    lengths = [len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
               for row in (short, long)]
    between = (lengths[0] + lengths[1]) // 2
    assert over_length(tokenizer, [short, short], between, None, "the test") == {}
    assert over_length(tokenizer, [short, long, long], between, None, "the test") == {"conversations": 2, "of": 3,
                                                                      "longest": lengths[1]}
    # max_length past the base's window: the conversations that run past it are counted too
    report = over_length(tokenizer, [short, long], lengths[1] + 10, between, "the test")
    assert report == {"conversations": 0, "of": 2, "longest": lengths[1], "window": between, "past_window": 1}
    assert over_length(tokenizer, [{"input_ids": [1, 2, 3]}], 2, None, "the test") == {}  # tokenized: cut already

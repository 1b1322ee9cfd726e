"""Chat templates for training vs inference (hfstack/core/templates.py) and checkpoint saving
(hfstack/core/checkpoint.py): markers stripped without changing a byte, the assistant mask of templates
with and without markers, the saved tokenizer, and generation stopping at the end of a turn."""

import json

import pytest

from hfstack.core.checkpoint import save_tokenizer, set_turn_end, turn_end_ids
from hfstack.core.errors import ConfigError
from hfstack.core.protocol import END_OF_TURN, chat_template
from hfstack.core.templates import (
    assistant_mask,
    has_generation_markers,
    inference_template,
    protocol_training_template,
    training_template,
)

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LAST_DIFFERS = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}|{% endfor %}"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "A small model."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4, of course!"},
]
TOOLS = [
    {"role": "user", "content": "What is 2**10, and who wrote Hamlet?"},
    {"role": "assistant", "content": "Let me compute it.", "tool_calls": [
        {"type": "function", "function": {"name": "python", "arguments": {"code": "print(2**10)"}}},
        {"type": "function", "function": {"name": "search", "arguments": {"query": "author of Hamlet"}}}]},
    {"role": "tool", "name": "python", "content": "1024"},
    {"role": "tool", "name": "search", "content": "William Shakespeare"},
    {"role": "assistant", "content": "2**10 is 1024; Shakespeare wrote Hamlet."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


@pytest.fixture(scope="module")
def tokenizer():
    """A small hfstack tokenizer (protocol tokens, marked template) that also knows ChatML's two tokens."""
    from hfstack.core.stdlib_text import stdlib_articles
    from hfstack.stages.tokenizer import to_transformers, train_bpe

    tok = to_transformers(train_bpe([" ".join(p) for _, p in stdlib_articles()[:20]], 400))
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tok


def render(template, messages, generation_prompt=False, **extra):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=generation_prompt, bos_token="<|endoftext|>", **extra)
    return rendered[0]


def runs(tok, ids, mask):
    """The decoded text of each maximal run of masked tokens."""
    out, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            out.append(tok.decode(current))
            current = []
    return out + ([tok.decode(current)] if current else [])


# ------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("default_system", [None, "I am Nano, say \"hi\".\n{% generation %}{{ not a tag }}"])
def test_inference_template_renders_hfstacks_template_byte_identically(default_system):
    marked = chat_template(default_system=default_system)
    plain = inference_template(marked)
    assert has_generation_markers(marked) and not has_generation_markers(plain)
    assert "generation -%}" not in plain and plain.count("generation %}") == bool(default_system)
    for messages in (CHAT, TOOLS, TOOLS[:3], CHAT[1:2]):
        for prompt in (False, True):
            assert render(plain, messages, prompt) == render(marked, messages, prompt)
    assert protocol_training_template(plain) == marked  # and the markers come back exactly


def test_inference_template_keeps_every_whitespace_variant():
    """Each tag variant next to text, lines and other tags that lstrip_blocks/trim_blocks touch."""
    pieces = ["{%- generation %}", "{% generation -%}", "{% generation %}", "{%+ generation +%}",
              "{%- generation -%}", "{%+ generation %}", "{% generation +%}"]
    surroundings = ["A {G}\n  {{% if x %}}B{{% endif %}}{E}\n  C", "\n{G}  {{% if x %}}B{{% endif %}}{E}\nC",
                    "x {G}{{%- if x %}}B{{% endif %}}{E}\n  y", "{G}  {{% if x %}}B\n{{% endif %}}  {E}  z",
                    "  {G}\n\n  B  \n  {E}\n", "a\n    {G}\n    {{{{ 'B' }}}}\n    {E}\n"]
    for start in pieces:
        for end in pieces:
            for surrounding in surroundings:
                marked = surrounding.format(G=start, E=end.replace("generation", "endgeneration"))
                plain = inference_template(marked)
                assert not has_generation_markers(plain)
                assert render(plain, [], x=True) == render(marked, [], x=True), (marked, plain)


def test_inference_template_matches_trls_training_templates():
    """Every training template TRL ships renders the same with its markers stripped."""
    from pathlib import Path

    import trl

    templates = sorted((Path(trl.__file__).parent / "chat_templates").glob("*_training.jinja"))
    assert len(templates) > 10
    checked = 0
    for path in templates:
        marked = path.read_text()
        plain = inference_template(marked)
        assert has_generation_markers(marked) and not has_generation_markers(plain), path.name
        for messages in (CHAT, CHAT[1:]):
            for prompt in (False, True):
                try:
                    expected = render(marked, messages, prompt)
                except Exception:  # multimodal templates want content lists: they must fail the same way
                    with pytest.raises(Exception):  # noqa: B017
                        render(plain, messages, prompt)
                    continue
                assert render(plain, messages, prompt) == expected, path.name
                checked += 1
    assert checked > 20


# --------------------------------------------------------------------------------------- assistant mask


def test_prefix_mask_on_a_chatml_template_covers_exactly_the_assistant(tokenizer):
    ids, mask = assistant_mask(tokenizer, CHAT, chat_template=CHATML)
    assert ids == tokenizer(render(CHATML, CHAT), add_special_tokens=False)["input_ids"]
    # the content, <|im_end|> and the newline after it (the template writes it before the next message;
    # TRL's training templates mark it the same way); never the '<|im_start|>assistant\n' header
    assert runs(tokenizer, ids, mask) == ["A small model.<|im_end|>\n", "It is 4, of course!<|im_end|>\n"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}


def test_prefix_mask_agrees_with_generation_markers_on_hfstacks_template(tokenizer):
    for default_system in (None, "I am Nano."):
        marked = chat_template(default_system=default_system)
        for messages in (CHAT, CHAT[1:], CHAT[1:3], [{"role": "assistant", "content": "First!"}]):
            with_markers = assistant_mask(tokenizer, messages, chat_template=marked)
            by_prefixes = assistant_mask(tokenizer, messages, chat_template=inference_template(marked))
            assert with_markers == by_prefixes
            assert sum(by_prefixes[1]) > 0
    ids, mask = assistant_mask(tokenizer, CHAT, chat_template=inference_template(chat_template()))
    assert runs(tokenizer, ids, mask) == ["A small model.<|assistant_end|>", "It is 4, of course!<|assistant_end|>"]


def test_tool_calls_need_the_markers_and_prefix_instability_is_an_error(tokenizer):
    ids, mask = assistant_mask(tokenizer, TOOLS, chat_template=chat_template())
    assert runs(tokenizer, ids, mask)[0] == ("Let me compute it.<|python_start|>print(2**10)<|python_end|>"
                                             "<|search_start|>author of Hamlet<|search_end|>")
    # after a tool output the turn goes on without '<|assistant_start|>': not prefix-stable by rendering
    with pytest.raises(ConfigError, match="not prefix-stable"):
        assistant_mask(tokenizer, TOOLS, chat_template=inference_template(chat_template()))
    with pytest.raises(ConfigError, match="not prefix-stable"):
        assistant_mask(tokenizer, CHAT, chat_template=LAST_DIFFERS)
    with pytest.raises(ConfigError, match="unknown role 'robot'"):
        assistant_mask(tokenizer, [{"role": "robot", "content": "hi"}], chat_template=inference_template(
            chat_template()))
    with pytest.raises(ConfigError, match="non-empty list"):
        assistant_mask(tokenizer, [], chat_template=CHATML)


def test_training_template_finds_markers(tokenizer):
    from trl.chat_template_utils import qwen2_5_chat_template

    marked = chat_template(default_system="I am Nano.")
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = marked
        assert training_template(tokenizer) == marked
        tokenizer.chat_template = inference_template(marked)
        assert training_template(tokenizer) == marked
        tokenizer.chat_template = qwen2_5_chat_template
        patched = training_template(tokenizer)
        assert patched and has_generation_markers(patched)
        tokenizer.chat_template = CHATML  # TRL does not know it: the caller renders prefixes
        assert training_template(tokenizer) is None
    finally:
        tokenizer.chat_template = original


# ------------------------------------------------------------------------------------------ checkpoint


def test_saved_tokenizer_loads_the_same_with_the_inference_template(tiny_sft_model, tmp_path):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(tiny_sft_model)
    original.chat_template = chat_template(default_system="I am Nano.")  # as the sft stage sets it
    save_tokenizer(original, tmp_path)
    assert has_generation_markers(original.chat_template)  # the caller's tokenizer is left as it was
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == (tmp_path / "chat_template.jinja").read_text()
    assert not has_generation_markers(config["chat_template"])
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == inference_template(original.chat_template)
    for attribute in ("all_special_tokens", "all_special_ids", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(loaded, attribute) == getattr(original, attribute), attribute
    text = "The sqlite3 module, 2**10 = 1024 <|assistant_end|> ünïcode"
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    for messages in (CHAT, TOOLS):
        assert loaded.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
            messages, tokenize=False)
        assert loaded.apply_chat_template(messages) == original.apply_chat_template(messages)
        assert assistant_mask(loaded, messages, training_template(loaded)) == assistant_mask(original, messages)


def test_a_models_own_tokenizer_class_stays(tmp_path):
    class Saved:  # what a foreign model's tokenizer writes
        chat_template = CHATML

        def save_pretrained(self, folder):
            (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))

    save_tokenizer(Saved(), tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config == {"tokenizer_class": "Qwen2Tokenizer", "chat_template": CHATML}


def test_generation_stops_at_the_end_of_a_turn(tiny_sft_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    tok = AutoTokenizer.from_pretrained(tiny_sft_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_sft_model)
    turn_end = tok.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.update(eos_token_id=tok.bos_token_id, pad_token_id=None, bos_token_id=None)
    set_turn_end(model, tok)
    config = model.generation_config
    expected = [turn_end] + ([tok.eos_token_id] if tok.eos_token_id != turn_end else [])  # sft makes it the eos
    assert turn_end_ids(tok) == expected
    # the turn end first, then the model's own stop ids, which stay (here the document boundary it had)
    assert config.eos_token_id == expected + [tok.bos_token_id]
    assert (config.pad_token_id, config.bos_token_id) == (tok.pad_token_id, tok.bos_token_id)

    class EndAtStep3(LogitsProcessor):  # never a turn end before the third new token, then always
        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores):
            scores = scores.clone()
            if input_ids.shape[1] - self.start < 2:
                scores[:, [turn_end, tok.eos_token_id]] = -float("inf")
            else:
                scores[:, :] = -float("inf")
                scores[:, turn_end] = 0
            return scores

    prompt = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False,
                             logits_processor=LogitsProcessorList([EndAtStep3(start)]))
    assert out.shape[1] == start + 3 and out[0, -1].item() == turn_end


def test_turn_end_of_a_foreign_tokenizer():
    class Foreign:  # no hfstack tokens, no pad
        eos_token_id, pad_token_id, bos_token_id, unk_token_id, unk_token = 2, None, None, 0, "<unk>"

        def convert_tokens_to_ids(self, token):
            return 0

    class Model:
        def __init__(self):
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig()

    model = Model()
    set_turn_end(model, Foreign())
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 2)
    assert model.generation_config.bos_token_id is None
    Foreign.eos_token_id = None
    with pytest.raises(ConfigError, match="neither an end-of-turn token nor an eos"):
        set_turn_end(model, Foreign())


# ------------------------------------------------------------------------------------------ token view


def test_token_view_marks_trained_tokens_without_markers(tokenizer, tmp_path):
    from hfstack.ui.tokens import tokens_of_chat

    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = chat_template()
        save_tokenizer(tokenizer, tmp_path / "hfstack")
        tokens = tokens_of_chat(str(tmp_path / "hfstack"), TOOLS, "conv.json")
        trained = b"".join(t.data for t in tokens if t.trained).decode()
        assert trained.startswith("Let me compute it.<|python_start|>") and "1024<|output_end|>" not in trained
        assert trained.endswith("You're welcome.<|assistant_end|>")
        tokenizer.chat_template = CHATML  # a foreign template TRL does not know: prefixes
        save_tokenizer(tokenizer, tmp_path / "chatml")
        tokens = tokens_of_chat(str(tmp_path / "chatml"), CHAT, "conv.json")
        assert b"".join(t.data for t in tokens if t.trained).decode() == (
            "A small model.<|im_end|>\nIt is 4, of course!<|im_end|>\n")
        tokenizer.chat_template = LAST_DIFFERS
        save_tokenizer(tokenizer, tmp_path / "unstable")
        with pytest.raises(ConfigError, match="^--chat 'conv.json': chat template is not prefix-stable"):
            tokens_of_chat(str(tmp_path / "unstable"), CHAT, "conv.json")
    finally:
        tokenizer.chat_template = original

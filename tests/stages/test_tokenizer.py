"""The tokenizer stage: round-trips, special tokens, the chat template's assistant mask, the fast
encoder, bad input, offline loading, and compression on real web text."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfstack.core.config import ConfigError
from hfstack.core.protocol import SPECIAL_TOKENS, TOOL_OUTPUT
from hfstack.core.splits import stable_split
from hfstack.core.stdlib_text import stdlib_articles
from hfstack.core.templates import assistant_mask, has_generation_markers, training_template
from hfstack.core.tokens import encode_ordinary, tiktoken_encoding
from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer, to_transformers, train_bpe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Standard-library documentation prose as jsonl, one article per line (about 0.4 MB)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as handle:
        for title, paragraphs in stdlib_articles():
            handle.write(json.dumps({"text": title + "\n\n" + "\n\n".join(paragraphs)}) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    run_tokenizer(TokenizerConfig(input=[str(corpus)], output_dir=str(out), vocab_size=1024, progress=False,
                                  heldout_fraction=0.1))
    from transformers import AutoTokenizer

    return out, AutoTokenizer.from_pretrained(out)


def test_stage_writes_loadable_tokenizer_and_eval(trained):
    out, tokenizer = trained
    report = json.loads((out / "eval.json").read_text())
    assert len(tokenizer) == report["vocab_size"] == 1024
    assert report["heldout_docs"] > 0 and report["train_docs"] > 0
    assert report["bytes_per_token"] > 2.0  # merges happened: raw bytes would be 1.0
    assert report["cl100k_bytes_per_token"] > 0 and report["ratio_to_cl100k"] > 0
    assert (out / "config.yaml").is_file() and (out / "chat_template.jinja").is_file()
    assert tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_unicode_round_trips_exactly(trained, text):
    _, tokenizer = trained
    ids = encode_ordinary(tokenizer, [text])[0]
    assert tokenizer.decode(ids) == text
    assert tiktoken_encoding(tokenizer).encode_ordinary(text) == ids


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.text(max_size=20), special=st.sampled_from(SPECIAL_TOKENS), suffix=st.text(max_size=20))
def test_plain_text_never_produces_special_tokens(trained, prefix, special, suffix):
    _, tokenizer = trained
    text = prefix + special + suffix
    special_ids = set(tokenizer.all_special_ids)
    ids = encode_ordinary(tokenizer, [text])[0]
    assert not special_ids & set(ids)
    assert not special_ids & set(tokenizer(text, split_special_tokens=True)["input_ids"])
    assert not special_ids & set(tiktoken_encoding(tokenizer).encode_ordinary(text))
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_never_split(trained):
    _, tokenizer = trained
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]  # the template's path: specials match
        assert len(ids) == 1 and tokenizer.decode(ids) == token
        assert tokenizer.convert_tokens_to_ids(token) == ids[0]


def test_digits_split_one_by_one_or_in_groups_of_three(corpus):
    texts = [json.loads(line)["text"] for line in corpus.open()][:5]
    numbers = "In 1984 there were 1234567 people and 42 cats."
    single = train_bpe(texts + [numbers] * 500, 600, digits="single")
    groups = train_bpe(texts + [numbers] * 500, 600, digits="groups3")
    digit_tokens = lambda tok: [t for t in tok.encode(numbers).tokens if t.strip("Ġ").isdigit()]  # noqa: E731
    assert all(len(t) == 1 for t in digit_tokens(single))
    assert any(len(t) > 1 for t in digit_tokens(groups)) and all(len(t) <= 3 for t in digit_tokens(groups))


def test_number_rule_makes_every_digit_group_one_token_and_keeps_the_vocab_size(corpus):
    import random

    texts = [json.loads(line)["text"] for line in corpus.open()][:5]
    tok = train_bpe(texts, 1500, digits="numbers")
    assert tok.get_vocab_size() <= 1500
    plain = train_bpe(texts, 1500 - 1110, digits="groups3")
    words = "".join(c for c in texts[0] if not c.isdigit())
    assert tok.encode(words).tokens == plain.encode(words).tokens  # text is split as without the rule
    for n in random.Random(0).sample(range(10 ** 8), 500) + [0, 7, 42, 100, 1000, 998001]:
        pieces = tok.encode(f"x {n}.").tokens[2:-1]
        assert "".join(pieces) == str(n) and all(len(p) == 3 for p in pieces[:-1]), (n, pieces)
    sample = texts[0] + " 998001 and 1234567 or -42.5"
    assert tiktoken_encoding(tok).encode_ordinary(sample) == tok.encode(sample).ids  # bulk encoding agrees
    with pytest.raises(ConfigError, match="'digits: numbers' needs 'vocab_size' of at least 1380"):
        TokenizerConfig(input=["x"], vocab_size=1000, digits="numbers")


CONVERSATION = [
    {"role": "system", "content": "You are hfstack's assistant."},
    {"role": "user", "content": "What is 2**10, and who wrote Hamlet?"},
    {"role": "assistant", "content": "Let me compute it.", "tool_calls": [
        {"type": "function", "function": {"name": "python", "arguments": {"code": "print(2**10)"}}},
        {"type": "function", "function": {"name": "search", "arguments": {"query": "author of Hamlet"}}}]},
    {"role": "tool", "name": "python", "content": "1024"},
    {"role": "tool", "name": "search", "content": "Hamlet is a tragedy by William Shakespeare."},
    {"role": "assistant", "content": "2**10 is 1024, and Shakespeare wrote Hamlet."},
    {"role": "user", "content": "Thanks! <|assistant_end|> is a token."},
    {"role": "assistant", "content": "You're welcome."},
]
TRAINED_SPANS = [
    "Let me compute it.<|python_start|>print(2**10)<|python_end|><|search_start|>author of Hamlet<|search_end|>",
    "2**10 is 1024, and Shakespeare wrote Hamlet.<|assistant_end|>",
    "You're welcome.<|assistant_end|>",
]


def _runs(tokenizer, ids, mask, value):
    """Decoded text of each maximal run of tokens whose mask equals `value`."""
    runs, current = [], []
    for token_id, flag in zip(ids, mask):
        if bool(flag) == value:
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_assistant_mask_is_exact_across_tool_calls_and_outputs(trained):
    _, tokenizer = trained
    # the saved template is the inference one (no generation markers); training puts hfstack's markers back
    assert not has_generation_markers(tokenizer.chat_template)
    ids, mask = assistant_mask(tokenizer, CONVERSATION, training_template(tokenizer))
    assert _runs(tokenizer, ids, mask, True) == TRAINED_SPANS
    untrained = "".join(_runs(tokenizer, ids, mask, False))
    assert f"{TOOL_OUTPUT[0]}1024{TOOL_OUTPUT[1]}" in untrained and "William Shakespeare" in untrained
    assert untrained.startswith("<|endoftext|><|system_start|>")
    assert untrained.count("<|assistant_start|>") == 2  # the turn goes on after tool outputs
    # the user's literal '<|assistant_end|>' is rendered into the template, so it becomes the token;
    # conversation data is checked for such text (hfstack.core.protocol.contains_protocol_token)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == tokenizer.decode(ids)


def test_generation_prompt_and_unknown_roles_or_tools(trained):
    _, tokenizer = trained
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user_end|><|assistant_start|>")
    bad_tool = [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "browser", "arguments": {"url": "x"}}}]}]
    with pytest.raises(Exception, match="unknown tool 'browser'"):
        tokenizer.apply_chat_template(bad_tool, tokenize=False)
    with pytest.raises(Exception, match="unknown role 'robot'"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)


def test_fast_encoder_gives_identical_ids_on_the_corpus(trained, corpus):
    _, tokenizer = trained
    texts = [json.loads(line)["text"] for line in corpus.open()]
    assert tiktoken_encoding(tokenizer).encode_ordinary_batch(texts) == encode_ordinary(tokenizer, texts)


def test_loads_in_a_fresh_offline_process(trained):
    out, _ = trained
    code = ("import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
            "from hfstack.core.templates import assistant_mask, training_template;"
            "ids, mask = assistant_mask(t, [{'role': 'user', 'content': 'hi'},"
            " {'role': 'assistant', 'content': 'yo'}], training_template(t)); print(sum(mask))")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) >= 2  # 'yo' and <|assistant_end|>


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="at least 270"):
        TokenizerConfig(input=["x"], vocab_size=100)
    with pytest.raises(ConfigError, match="does not exist"):
        run_tokenizer(TokenizerConfig(input=[str(tmp_path / "missing.jsonl")], output_dir=str(tmp_path / "o")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no text to train on"):
        run_tokenizer(TokenizerConfig(input=[str(empty)], output_dir=str(tmp_path / "o"), progress=False))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl' line 2: not a JSON object"):
        run_tokenizer(TokenizerConfig(input=[str(bad_json)], output_dir=str(tmp_path / "o"), progress=False))
    wrong_field = tmp_path / "wrong.jsonl"
    wrong_field.write_text('{"content": "hello"}\n')
    with pytest.raises(ConfigError, match="no field 'text'"):
        run_tokenizer(TokenizerConfig(input=[str(wrong_field)], output_dir=str(tmp_path / "o"), progress=False))
    broken_gz = tmp_path / "broken.jsonl.gz"
    broken_gz.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 100)[:40])
    with pytest.raises(ConfigError, match="broken.jsonl.gz': cannot read it"):
        run_tokenizer(TokenizerConfig(input=[str(broken_gz)], output_dir=str(tmp_path / "o"), progress=False))
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(b"not a parquet file")
    with pytest.raises(ConfigError, match="fake.parquet': cannot read it"):
        run_tokenizer(TokenizerConfig(input=[str(not_parquet)], output_dir=str(tmp_path / "o"), progress=False))


def test_reads_the_data_stage_directory_but_not_its_work_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    (data / "work").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["the data stage kept this page " * 20] * 3, "id": ["a", "b", "c"]}),
                   data / "000_00000.parquet")
    (data / "stats.json").write_text("{}")
    (data / "work" / "x.jsonl").write_text("not json at all\n")
    out = run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(tmp_path / "tok"), vocab_size=300,
                                        heldout_fraction=0.0, compare_cl100k=False, progress=False))
    assert json.loads((out / "eval.json").read_text())["train_docs"] == 3


@pytest.mark.slow
def test_bigger_vocab_compresses_real_web_text_better(sample_run):
    """On text extracted from the shared crawl sample, 8k merges beat 1k on held-out documents."""
    import pyarrow.parquet as pq

    out, _, _ = sample_run
    texts = [t for f in sorted(out.glob("*.parquet")) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    train = [t for t in texts if not stable_split(t, 0.1)]
    heldout = [t for t in texts if stable_split(t, 0.1)]
    assert len(heldout) >= 10 and len(train) >= 200
    n_bytes = sum(len(t.encode()) for t in heldout)
    per_token = {}
    for vocab in (1024, 8192):
        tokenizer = to_transformers(train_bpe(train, vocab))
        per_token[vocab] = n_bytes / sum(len(ids) for ids in encode_ordinary(tokenizer, heldout))
    assert per_token[8192] > per_token[1024] * 1.1, per_token


def test_hub_input_fails_fast_when_offline(tmp_path):
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        run_tokenizer(TokenizerConfig(hub_dataset="HuggingFaceFW/fineweb", output_dir=str(tmp_path), progress=False))

"""Weighted dataset mixtures (hfstack/dataprep/dataset_mixture.py): weights, layouts, kinds, held-out
split, streaming, and one-line errors for bad entries. All offline, on tiny files built in tmp_path.

    python -m pytest -q tests/unit/test_dataset_mixture.py
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import yaml

from hfstack.core.config import ConfigError, from_dict, load_config
from hfstack.dataprep.dataset_mixture import DatasetMixture, MixtureEntry, load_mixture

QA = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(60)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def mix(*entries, **options) -> DatasetMixture:
    return DatasetMixture(datasets=list(entries), **options)


def texts(rows):
    return [tuple(m["content"] for m in row["messages"]) for row in rows]


def one_line_error(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError, match=match) as err:
        call(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """The datasets library's cache of the local files it reads goes under tmp_path, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


@pytest.fixture
def two_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "A"} for i in range(50)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "B"} for i in range(50)])
    return a, b


def test_weights_are_sampling_probabilities_and_short_datasets_are_recycled(two_files):
    a, b = two_files
    total = 2000
    result = load_mixture(mix({"id": a, "weight": 0.7}, {"id": b, "weight": 0.3}, seed=3), "chat", total=total)
    assert len(result.train) == total and result.test == []
    share = sum(row["messages"][1]["content"] == "A" for row in result.train) / total
    bound = 4 * math.sqrt(0.7 * 0.3 / total)  # four standard errors of a binomial proportion (~0.041)
    assert abs(share - 0.7) < bound, (share, bound)
    assert result.report["rows"] == {a: round(share * total), b: total - round(share * total)}
    assert result.report["repeats"][a] >= total * 0.6 // 50 - 1 and result.report["repeats"][b] >= 1

    until_first_runs_out = load_mixture(mix({"id": a, "weight": 0.7}, {"id": b, "weight": 0.3}), "chat")
    assert until_first_runs_out.report["rows"][a] == 50 and until_first_runs_out.report["rows"][b] < 50
    assert until_first_runs_out.report["repeats"] == {}
    assert len(set(texts(until_first_runs_out.train))) == len(until_first_runs_out.train)  # nothing drawn twice


TOOL_CALL = [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(2**10)"}}}]
LAYOUTS = {
    "sharegpt": ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                                    {"from": "gpt", "value": "hello"}]},
                 [("system", "Be brief."), ("user", "hi"), ("assistant", "hello")]),
    "sharegpt_roles": ({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                       [("user", "hi"), ("assistant", "yo")]),
    "prompt_completion": ({"prompt": "2+2?", "completion": "4"}, [("user", "2+2?"), ("assistant", "4")]),
    "conversational_prompt_completion": (
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}],
         "completion": [{"role": "assistant", "content": "4"}]},
        [("system", "S"), ("user", "2+2?"), ("assistant", "4")]),
    "alpaca_with_input": ({"instruction": "Translate.", "input": "bonjour", "output": "hello"},
                          [("user", "Translate.\n\nbonjour"), ("assistant", "hello")]),
    "alpaca_without_input": ({"instruction": "Say yes.", "input": "", "output": "yes"},
                             [("user", "Say yes."), ("assistant", "yes")]),
    "prompt_response": ({"prompt": "p", "response": "r"}, [("user", "p"), ("assistant", "r")]),
    "question_answer": ({"question": "q", "answer": "a"}, [("user", "q"), ("assistant", "a")]),
    "messages_with_tool_call": (
        {"messages": [{"role": "user", "content": "2**10?"},
                      {"role": "assistant", "content": "", "tool_calls": TOOL_CALL},
                      {"role": "tool", "name": "python", "content": "1024"},
                      {"role": "assistant", "content": "1024"}]},
        [("user", "2**10?"), ("assistant", ""), ("tool", "1024"), ("assistant", "1024")]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_chat_layout_maps_to_messages(tmp_path, layout):
    row, expected = LAYOUTS[layout]
    rows = load_mixture(mix({"id": write_jsonl(tmp_path / f"{layout}.jsonl", [row])}), "chat").train
    assert [(m["role"], m["content"]) for m in rows[0]["messages"]] == expected
    assert all(set(m) == {"role", "content", "tool_calls", "name"} for m in rows[0]["messages"])  # one schema
    if layout == "messages_with_tool_call":
        assert rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"]["code"] == "print(2**10)"


def test_a_file_mixing_layouts_and_other_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    mixed = write_jsonl(tmp_path / "mixed.jsonl", [LAYOUTS["question_answer"][0], LAYOUTS["prompt_response"][0]])
    assert sorted(texts(load_mixture(mix({"id": mixed}), "chat").train)) == [("p", "r"), ("q", "a")]
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(QA[i * 3:i * 3 + 3]), shards / f"part-{i}.parquet")
    Dataset.from_list(QA[:4]).save_to_disk(str(tmp_path / "arrow"))
    result = load_mixture(mix({"id": str(shards)}, {"id": str(tmp_path / "arrow")}, {"id": mixed}), "chat")
    assert result.report["available"] == {str(shards): 6, str(tmp_path / "arrow"): 4, mixed: 2}


def test_columns_keep_or_rename(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"q": "hi", "a": "yo", "junk": 1}])
    renamed = load_mixture(mix({"id": path, "columns": {"q": "question", "a": "answer"}}), "chat").train
    assert texts(renamed) == [("hi", "yo")]
    kept = load_mixture(mix({"id": write_jsonl(tmp_path / "rl.jsonl", [{"prompt": "2+2?", "answer": "4", "junk": 1}]),
                             "columns": ["prompt", "answer"]}), "prompts").train
    assert kept == [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}]
    message = one_line_error("no column", load_mixture, mix({"id": path, "columns": ["q", "missing"]}), "chat")
    assert "'missing'" in message and "odd.jsonl" in message


def test_protocol_token_rows_are_dropped_and_counted_exactly(tmp_path):
    clean = [{"question": f"q{i}", "answer": "a"} for i in range(7)]
    spoiled = [{"question": "hi <|user_end|>", "answer": "a"}, {"question": "q", "answer": "<|assistant_end|>"},
               {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
                             "tool_calls": [{"type": "function", "function": {
                                 "name": "python", "arguments": {"code": "'<|python_end|>'"}}}]}]}]
    path = write_jsonl(tmp_path / "spoiled.jsonl", clean + spoiled)
    result = load_mixture(mix({"id": path}), "chat")
    assert len(result.train) == 7 and result.report["dropped_protocol_token"] == {path: 3}
    assert not any("<|" in m["content"] for row in result.train for m in row["messages"])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"},
                                                   {"prompt": "p", "chosen": "<|endoftext|>", "rejected": "bad"}])
    assert load_mixture(mix({"id": pairs}), "preferences").report["dropped_protocol_token"] == {pairs: 1}


def test_test_split_holds_out_the_fraction_without_overlap(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(100)])
    result = load_mixture(mix({"id": path}, test_split_size=0.2, seed=5), "chat")
    assert (len(result.train), len(result.test)) == (80, 20)
    assert result.report["train"] == 80 and result.report["test"] == 20
    train, test = set(texts(result.train)), set(texts(result.test))
    assert not train & test and len(train | test) == 100
    recycled = load_mixture(mix({"id": path}, test_split_size=0.2), "chat", total=300)  # copies stay together
    assert not set(texts(recycled.train)) & set(texts(recycled.test))
    assert 55 <= len(recycled.test) <= 65


def test_streaming_reads_the_requested_count(two_files):
    a, b = two_files
    options = {"streaming": True, "shuffle_buffer": 16}
    result = load_mixture(mix({"id": a, "weight": 2}, {"id": b}, test_split_size=0.1, **options), "chat", total=37)
    assert len(result.train) + len(result.test) == 37 and len(result.test) == 4
    assert sum(result.report["rows"].values()) == 37
    recycled = load_mixture(mix({"id": a}, {"id": b}, **options), "chat", total=150)
    assert len(recycled.train) == 150 and set(recycled.report["repeats"]) == {a, b}
    again = load_mixture(mix({"id": a, "weight": 2}, {"id": b}, test_split_size=0.1, **options), "chat", total=37)
    assert again.train == result.train
    one_line_error("needs a number of rows", load_mixture, mix({"id": a}, streaming=True), "chat")


def test_seeded_draws_are_reproducible_and_the_seed_matters(two_files):
    a, b = two_files
    draw = lambda seed: texts(load_mixture(mix({"id": a}, {"id": b}, seed=seed), "chat", total=60).train)  # noqa: E731
    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_preferences_match_what_the_reward_stage_loads(tmp_path):
    import pyarrow.parquet as pq

    from hfstack.dataprep.preferences import load_pairs
    from hfstack.stages.rank import PAIR_SCHEMA, ranking_to_pairs

    ranked = tmp_path / "prefs"
    (ranked / "data").mkdir(parents=True)
    pairs = ranking_to_pairs("Name a colour.", ["red", "blue", "green"], [0, 1, 2])
    pq.write_table(PAIR_SCHEMA.empty_table().from_pylist(pairs, schema=PAIR_SCHEMA), ranked / "data" / "train.parquet")
    rows = load_mixture(mix({"id": str(ranked)}), "preferences").train
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(rows, key=key) == sorted(load_pairs(str(ranked), "train"), key=key)

    implicit = write_jsonl(tmp_path / "uf.jsonl", [{  # UltraFeedback: the prompt inside both conversations
        "prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}]}])
    assert load_mixture(mix({"id": implicit}), "preferences").train == [{
        "prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}]}]
    text = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "Q", "chosen": "yes", "rejected": "no"}])
    assert load_mixture(mix({"id": text}), "preferences").train == [{"prompt": "Q", "chosen": "yes", "rejected": "no"}]
    both = load_mixture(mix({"id": text}, {"id": implicit}), "preferences", total=20).train  # one type per column
    assert {row["prompt"][0]["content"] for row in both} == {"Q", "Hi?"}
    assert {row["chosen"][0]["content"] for row in both} == {"yes", "Hello!"}
    chat = write_jsonl(tmp_path / "chat.jsonl", QA[:1])
    message = one_line_error(r"chat.jsonl' row 0: no known preferences layout", load_mixture, mix({"id": chat}),
                             "preferences")
    assert "chosen/rejected" in message and "keys: ['answer', 'question']" in message


def test_prompts_for_rl_keep_other_columns(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": "2+2?", "answer": "4", "task": "math"}])
    assert load_mixture(mix({"id": path}), "prompts").train == [
        {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4", "task": "math"}]
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}], "answer": "x"}])
    row = load_mixture(mix({"id": chats}), "prompts").train[0]
    assert [m["content"] for m in row["prompt"]] == ["S", "u1", "a1", "u2"] and row["answer"] == "x"
    assert "messages" not in row


def test_bad_entries_are_one_line_errors_naming_the_culprit(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", QA[:3])
    message = one_line_error("dataset_mixture: datasets\\[1\\]: unknown key 'wieght'", DatasetMixture,
                             datasets=[{"id": good}, {"id": good, "wieght": 2}])
    assert "did you mean 'weight'" in message and "columns" in message and "revision" in message
    one_line_error(f"dataset_mixture: dataset '{good}': 'weight' must be > 0", DatasetMixture,
                   datasets=[{"id": good, "weight": 0}])
    one_line_error("datasets\\[0\\]: field 'weight': expected float", DatasetMixture,
                   datasets=[{"id": good, "weight": "heavy"}])
    one_line_error("dataset_mixture: 'datasets' must be a non-empty list", DatasetMixture, datasets=[])
    one_line_error("datasets\\[0\\]: no 'id'", DatasetMixture, datasets=[{"weight": 1}])
    one_line_error("'test_split_size' must be in \\[0, 1\\)", DatasetMixture, datasets=[{"id": good}],
                   test_split_size=1.0)
    one_line_error("'columns' must be", MixtureEntry, id=good, columns="question")
    missing = str(tmp_path / "nowhere.jsonl")
    one_line_error(f"dataset '{missing}': no such file or folder", load_mixture, mix({"id": missing}), "chat")
    one_line_error("dataset 'someone/not-there': not a local file or folder, and HF_HUB_OFFLINE is set",
                   load_mixture, mix({"id": "someone/not-there"}), "chat")
    odd = write_jsonl(tmp_path / "odd.jsonl", QA[:2] + [{"text": "no layout", "label": 1}])
    message = one_line_error("odd.jsonl' row 2: no known chat layout", load_mixture, mix({"id": odd}), "chat")
    assert "keys: ['answer', 'label', 'question', 'text']" in message  # a jsonl file's other keys come as null
    one_line_error(r"odd.jsonl' row \d \(streamed\): no known chat layout", load_mixture,
                   mix({"id": odd}, streaming=True), "chat", total=5)
    one_line_error("unknown kind 'sft'", load_mixture, mix({"id": good}), "sft")
    one_line_error("leaves no training rows", load_mixture, mix({"id": good}, test_split_size=0.9), "chat")
    spoiled = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "<|pad|>", "completion": "x"}])
    one_line_error("bad.jsonl': no usable rows .*protocol tokens", load_mixture, mix({"id": spoiled}), "chat")


@dataclass
class StageConfig:
    output_dir: str = "runs/x"
    dataset_mixture: DatasetMixture | None = None


def test_a_stage_config_builds_the_mixture_from_yaml_and_the_command_line(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", QA[:5])
    values = yaml.safe_load(f"""
        dataset_mixture:
          datasets:
            - id: {good}
              weight: 0.7
              columns: {{question: prompt, answer: answer}}
            - {{id: {good}, split: train, weight: 0.3}}
          seed: 7
          test_split_size: 0.2
    """)
    cfg = from_dict(StageConfig, values, "recipe.yaml")
    mixture = cfg.dataset_mixture
    assert isinstance(mixture, DatasetMixture) and mixture.seed == 7 and mixture.test_split_size == 0.2
    assert all(isinstance(e, MixtureEntry) for e in mixture.datasets)
    assert mixture.datasets[0].columns == {"question": "prompt", "answer": "answer"}
    assert mixture.datasets[1].weight == 0.3
    rows = load_mixture(mixture, "prompts", total=10).train
    assert len(rows) == 8 and all(r["prompt"][0]["role"] == "user" for r in rows)
    assert from_dict(StageConfig, {}, "recipe.yaml").dataset_mixture is None
    cli = load_config(StageConfig, cli_args=["--dataset_mixture", f"{{datasets: [{{id: {good}}}], streaming: true}}"])
    assert cli.dataset_mixture.streaming is True and cli.dataset_mixture.datasets[0].id == good
    with pytest.raises(ConfigError, match="unknown key 'weigth'"):
        from_dict(StageConfig, {"dataset_mixture": {"datasets": [{"id": good, "weigth": 1}]}}, "recipe.yaml")

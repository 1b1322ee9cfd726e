"""The tasks own their scoring, and one held-out rule serves every split: every registered task's
reference answers score right and corrupted ones wrong, its reward agrees with its score, its train and
eval items never overlap, spelling is scored as spelling (also by `hfstack eval`), and `stable_split`
decides the tasks', knowledge's and `hfstack rank`'s held-out items alike.

    python -m pytest -q tests/unit/test_tasks.py
"""

import json
import re
from pathlib import Path

import pytest

from hfstack.core.config import ConfigError
from hfstack.core.splits import stable_split
from hfstack.core.stdlib_text import stdlib_articles
from hfstack.dataprep.knowledge import derive_facts, knowledge_conversations
from hfstack.rlalgo.rewards import BUILTIN_TASKS, correctness_reward, format_reward
from hfstack.tasks.registry import TASKS
from hfstack.tasks.spelling import SpellingTask
from hfstack.tools.search import SearchIndex

PACKAGE = Path(__file__).resolve().parents[2] / "hfstack"


def final(row: dict) -> str:
    return row["messages"][-1]["content"]


def other_last_number(answer: str) -> str:
    """The answer with the number it ends on changed: the same sentence, the wrong result."""
    last = list(re.finditer(r"-?\d+", answer))[-1]
    return answer[:last.start()] + str(int(last.group()) + 1) + answer[last.end():]


def misspelled(answer: str) -> str:
    """The last letter of the spelling changed: 'h-e-l-l-o' becomes 'h-e-l-l-p'."""
    return answer[:-1] + ("a" if answer[-1] != "a" else "b")


CORRUPTIONS = {  # a wrong answer for each task, as close to the right one as the task allows
    "identity": lambda answer: "I am an AI assistant.",
    "arithmetic": other_last_number,
    "counting": other_last_number,
    "spelling": misspelled,
    "search": lambda answer: "I don't know.",
    "multiturn": None,  # the last turn's own task's corruption (corrupted)
}


def corrupted(name: str, row: dict, answer: str) -> str:
    return CORRUPTIONS[row["last_task"] if name == "multiturn" else name](answer)


@pytest.fixture(scope="module")
def search_settings():
    texts = [" ".join(p) for _, p in stdlib_articles()[:60]]
    return {"facts": derive_facts(texts), "index": SearchIndex.build(texts)}


@pytest.fixture(scope="module")
def generated(search_settings):
    return {name: task.generate(200, 0, **(search_settings if name == "search" else {}))
            for name, task in TASKS.items()}


def test_every_task_is_registered_under_its_name_with_a_corruption_here():
    assert set(TASKS) == {"identity", "arithmetic", "counting", "spelling", "search", "multiturn"} == set(CORRUPTIONS)
    assert all(task.name == name for name, task in TASKS.items())
    assert BUILTIN_TASKS == ("arithmetic", "counting")  # RL trains on the tasks with an answer form


@pytest.mark.parametrize("name", sorted(TASKS))
def test_references_score_right_corruptions_wrong_and_reward_agrees(name, generated):
    task, rows = TASKS[name], generated[name]["eval"]
    assert rows and all(r["task"] == name for r in rows)
    for row in rows:
        reference, wrong = final(row), corrupted(name, row, final(row))
        assert task.score(row, reference), (row, reference)
        assert not task.score(row, wrong), (row, wrong)
        assert task.reward(row, reference) == 1.0 and task.reward(row, wrong) == 0.0
        assert task.prompt(row)[-1]["role"] == "user" and reference not in str(task.prompt(row))
    if task.answer_form:  # RL's reward sees only the expected answer; its format reward, the phrasing
        assert all(re.match(task.answer_form, final(r)) for r in rows)
        assert correctness_reward(None, task=[name] * len(rows), answer=[r["answer"] for r in rows],
                                  reply=[final(r) for r in rows]) == [1.0] * len(rows)
        assert format_reward(None, task=[name], reply=[final(rows[0])], finished=[True], tool_errors=[0]) == [1.0]


def test_without_tools_the_spelled_out_count_is_scored_on_its_last_line(generated):
    counting = TASKS["counting"]
    spelled = [r for r in generated["counting"]["eval"] if final(r).startswith(counting.no_tool_prefill)]
    assert spelled
    for row in spelled:
        assert counting.score(row, final(row), no_tools=True)
        assert not counting.score(row, other_last_number(final(row)), no_tools=True)
    with_tool = next(r for r in generated["counting"]["eval"] if not final(r).startswith(counting.no_tool_prefill))
    assert not counting.score(with_tool, final(with_tool), no_tools=True)  # the tool's phrasing is not the bare one


def test_spelling_is_scored_by_the_spelling_task(generated):
    spelling = TASKS["spelling"]
    mixed_in = [r for r in generated["counting"]["train"] if r["task"] == "spelling"]
    assert mixed_in and all(isinstance(TASKS[r["task"]], SpellingTask) for r in mixed_in)
    for row in generated["spelling"]["eval"][:20] + mixed_in[:20]:
        word, letter = row["word"], row["word"][0]
        right_count = f"So '{word}' has {word.count(letter)} '{letter}'."
        assert not spelling.score(row, right_count)  # counting's answer, right as a count: no spelling
        assert not spelling.score(row, "-".join(word[:-1]))  # a letter short
        assert not spelling.score(row, word)  # written whole, not spelled out
        assert spelling.score(row, "-".join(word)) and spelling.score(row, f"Sure: {'-'.join(word).upper()}.")
        assert spelling.score({"answer": row["answer"]}, "-".join(word))  # RL's rows carry only the answer


def test_eval_scores_spelling_rows_as_spelling(tmp_path, monkeypatch):
    """`hfstack eval` hands each held-out row to the task it names: spelling rows were counting's once."""
    from hfstack.stages import eval as eval_stage
    from hfstack.tasks import base
    from hfstack.tools.loop import Reply

    rows = TASKS["spelling"].generate(20, 0)["eval"] + TASKS["counting"].generate(20, 0)["eval"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")
    (model / "eval_sets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = {r["messages"][0]["content"]: final(r) for r in rows}
    monkeypatch.setattr(eval_stage, "load_model", lambda path: (None, None))
    monkeypatch.setattr(base, "assistant_replies", lambda model, tokenizer, prompts, *a, prefill="", **k: [
        Reply(answer=prefill if prefill else reference[p[0]["content"]]) for p in prompts])
    report = eval_stage.evaluate(eval_stage.EvalConfig(model=str(model)))
    assert report["spelling"]["items"] == 4 and report["spelling"]["accuracy"] == 1.0
    assert report["counting"]["items"] == 4 and report["counting"]["accuracy"] == 1.0
    assert "accuracy_without_tools" not in report["spelling"]  # no prefill: spelling uses no tools anyway
    (model / "eval_sets.jsonl").write_text(json.dumps(rows[0] | {"task": "chess"}) + "\n")
    with pytest.raises(ConfigError, match="unknown task 'chess'.*spelling"):
        eval_stage.evaluate(eval_stage.EvalConfig(model=str(model)))


def test_the_mixture_generates_each_task_from_its_own_stream():
    """Spelling is a mixture source of its own; adding it leaves the other sources' conversations as they were."""
    from hfstack.dataprep.mixture import build_mixture
    from hfstack.tasks.identity import IdentityCard

    _, alone = build_mixture({"counting": 30}, IdentityCard(), [], [], -1, seed=0)
    train, both = build_mixture({"counting": 30, "spelling": 30}, IdentityCard(), [], [], -1, seed=0)
    assert set(both) == {"counting", "spelling"} and both["counting"] == alone["counting"]
    assert all(r["task"] == "spelling" for r in both["spelling"]) and len(train) == 60


def question_key(name: str, row: dict) -> str:
    """What must never be in both splits: the item, or for identity the question's phrasing (for a
    multi-turn conversation, its last part's)."""
    if name == "multiturn":
        return question_key(row["last_task"], row["last"])
    if name in ("counting", "spelling"):
        return row["word"]
    if name == "arithmetic":
        return row["messages"][1]["tool_calls"][0]["function"]["arguments"]["code"]
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_and_eval_items_never_overlap(name, generated):
    splits = {s: {question_key(name, r) for r in generated[name][s] if r["task"] == name} for s in ("train", "eval")}
    assert splits["train"] and splits["eval"] and not splits["train"] & splits["eval"]


def test_stable_split_is_deterministic_and_hits_the_fraction():
    keys = [f"item {i}" for i in range(10_000)]
    for fraction in (0.05, 0.2, 0.5):
        held = [k for k in keys if stable_split(k, fraction)]
        assert abs(len(held) / len(keys) - fraction) < 0.015, fraction
        assert held == [k for k in keys if stable_split(k, fraction)]
        assert set(held) <= {k for k in keys if stable_split(k, fraction + 0.1)}  # a larger fraction adds items
    assert not any(stable_split(k, 0.0) for k in keys) and all(stable_split(k, 1.0) for k in keys)
    assert stable_split("\ud800 a lone surrogate", 1.0)  # any str, even one that is not valid UTF-8


def test_tasks_knowledge_and_rank_all_hold_out_by_stable_split(tmp_path, generated):
    for row in generated["counting"]["eval"] + generated["spelling"]["eval"]:
        assert stable_split(row["word"], 0.2)
    for row in generated["counting"]["train"]:
        assert not stable_split(row["word"], 0.2)
    for split, rows in generated["arithmetic"].items():
        for row in rows:
            item = question_key("arithmetic", row).removeprefix("print(").removesuffix(")").replace(" ", "")
            assert stable_split(item, 0.2) == (split == "eval")  # the key is "12+30"
    facts = [{"question": f"What is thing {i}?", "answer": f"Thing {i}.", "known": True} for i in range(200)]
    asked = knowledge_conversations(facts, seed=0)
    assert {r["messages"][0]["content"] for r in asked["eval"]} == {
        f["question"] for f in facts if stable_split(f["question"], 0.2)}
    from hfstack.stages.rank import RankingStore

    store = RankingStore(tmp_path, test_fraction=0.3)
    prompts = [f"Tell me a joke about thing {i}." for i in range(60)]
    store.write_rollouts([{"prompt_id": i, "prompt": p, "completions": ["a", "b"]} for i, p in enumerate(prompts)])
    for i in range(len(prompts)):
        store.save_ranking(i, [0, 1], ranker="person")
    store.export_pairs()
    import pyarrow.parquet as pq

    tested = {row["prompt"][0]["content"] for row in pq.read_table(tmp_path / "data" / "test.parquet").to_pylist()}
    assert tested == {p for p in prompts if stable_split(p, 0.3)}


def test_stable_split_is_the_only_hash_split_in_the_package():
    """Documents (packing, tokenizer, regurgitation), tasks, knowledge and rank: none hashes on its own;
    the small sets (question templates, identity phrasings) take held_out_quota from the same module."""
    hashing = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "crc32" in p.read_text())
    assert hashing == ["core/splits.py"]
    for module in ("dataprep/packing.py", "stages/tokenizer.py", "stages/regurgitation.py", "stages/rank.py",
                   "dataprep/knowledge.py", "tasks/arithmetic.py", "tasks/counting.py", "tasks/spelling.py"):
        assert "stable_split(" in (PACKAGE / module).read_text(), module


def test_a_small_set_holds_out_its_quota_and_the_rest_trains():
    """17 arithmetic templates at 0.3 hold out 5, every run the same; a per-key split of so few held out 1
    or 4 depending on the bucket count. Train and eval never share a template; one template holds none out."""
    from hfstack.core.splits import held_out_quota
    from hfstack.tasks.arithmetic import ARITHMETIC_PHRASINGS
    from hfstack.tasks.conversation import phrasings

    eval_templates, train_templates = phrasings(ARITHMETIC_PHRASINGS, "eval"), phrasings(ARITHMETIC_PHRASINGS, "train")
    assert len(eval_templates) == round(0.3 * len(ARITHMETIC_PHRASINGS)) == 5
    assert set(eval_templates).isdisjoint(train_templates)
    assert set(eval_templates) | set(train_templates) == set(ARITHMETIC_PHRASINGS)
    assert held_out_quota(list(reversed(ARITHMETIC_PHRASINGS)), 0.3) == set(eval_templates)  # order does not matter
    assert held_out_quota(["only"], 0.3) == set() and phrasings(["only"], "eval") == ["only"]
    assert len(held_out_quota(["a", "b"], 0.9)) == 1  # never all of them


def test_multiturn_conversations_mix_tasks_keep_tool_history_and_hold_out_every_part(generated):
    from hfstack.tasks.multiturn import PARTS, later_turn_report

    rows = generated["multiturn"]
    for split in ("train", "eval"):
        for row in rows[split]:
            users = [m for m in row["messages"] if m["role"] == "user"]
            assert row["turns"] in (2, 3) and len(users) >= row["turns"] and row["last_task"] in PARTS
            assert [m["role"] for m in row["messages"]].count("system") <= 1
            assert row["messages"][0]["role"] in ("system", "user") and row["messages"][-1]["role"] == "assistant"
            tail = [m for m in row["last"]["messages"] if m["role"] != "system"]
            assert row["messages"][-len(tail):] == tail  # the conversation ends on the part it is scored by
    # earlier parts' tool calls and outputs stay in the history the last question is asked after
    assert any(m["role"] == "tool" for r in rows["eval"] for m in TASKS["multiturn"].prompt(r))
    assert {r["last_task"] for r in rows["eval"]} == set(PARTS) and {r["turns"] for r in rows["eval"]} == {2, 3}
    questions = {s: {m["content"] for r in rows[s] for m in r["messages"] if m["role"] == "user"}
                 for s in ("train", "eval")}
    assert not questions["train"] & questions["eval"]  # no held-out part, in any position, is trained on
    report = later_turn_report(rows["eval"], [r["last_task"] != "counting" for r in rows["eval"]],
                               {"arithmetic": 0.5, "identity": 1.0, "counting": 0.4})
    assert report["arithmetic"]["ratio"] == 2.0 and report["identity"]["ratio"] == 1.0
    assert report["counting"]["accuracy"] == 0.0 and report["counting"]["ratio"] == 0.0


def test_eval_scores_the_later_turns_against_the_same_tasks_asked_alone(tmp_path, monkeypatch, capsys):
    """`hfstack eval` on a multi-turn set: accuracy on the last turn per task, beside that task's own accuracy,
    and their ratio. The stand-in model answers every single-turn question right, and a later turn only
    when it is arithmetic."""
    from hfstack.stages import eval as eval_stage
    from hfstack.tasks import base
    from hfstack.tools.loop import Reply

    rows = TASKS["multiturn"].generate(40, 0)["eval"] + TASKS["arithmetic"].generate(20, 0)["eval"] + \
        TASKS["counting"].generate(20, 0)["eval"] + TASKS["identity"].generate(20, 0)["eval"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")
    (model / "eval_sets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = {json.dumps(TASKS[r["task"]].prompt(r)): (r, final(r)) for r in rows}

    def replies(model, tokenizer, prompts, *a, prefill="", **k):
        out = []
        for prompt in prompts:
            row, answer = reference[json.dumps(prompt)]
            later = row["task"] == "multiturn" and row["last_task"] != "arithmetic"
            out.append(Reply(answer=prefill or ("I am not sure." if later else answer)))
        return out

    monkeypatch.setattr(eval_stage, "load_model", lambda path: (None, None))
    monkeypatch.setattr(base, "assistant_replies", replies)
    report = eval_stage.evaluate(eval_stage.EvalConfig(model=str(model)))
    later = report["multiturn"]["later_turns"]
    assert later["arithmetic"] == {"items": later["arithmetic"]["items"], "accuracy": 1.0,
                                   "single_turn_accuracy": 1.0, "ratio": 1.0}
    assert later["counting"]["accuracy"] == later["identity"]["accuracy"] == 0.0 == later["counting"]["ratio"]
    assert sum(v["items"] for v in later.values()) == report["multiturn"]["items"] == 8
    assert "later turn arithmetic: 100.0%" in capsys.readouterr().out

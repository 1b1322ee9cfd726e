"""SFT: conversation generators, the mixture, the trained-token mask, training (full and LoRA),
batch chat through the tool loop, and the held-out evaluation."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from hfstack.core.config import ConfigError
from hfstack.core.stdlib_text import stdlib_articles
from hfstack.dataprep.mixture import build_mixture, load_chat_file
from hfstack.stages.sft import SFTStageConfig, run_sft
from hfstack.tasks.identity import IdentityCard
from hfstack.tasks.registry import TASKS


@pytest.fixture
def base(tiny_base_model):
    """The session's tiny base model (tests/conftest.py)."""
    return tiny_base_model


def keys(rows, key):
    return {key(r) for r in rows}


def arithmetic(n, seed):
    return TASKS["arithmetic"].generate(n, seed)


def counting(n, seed):
    return TASKS["counting"].generate(n, seed)


def identity(card, n, seed):
    return TASKS["identity"].generate(n, seed, card=card)


def test_generators_are_deterministic_and_eval_never_overlaps_training():
    assert arithmetic(50, seed=3) == arithmetic(50, seed=3)
    assert arithmetic(50, seed=3) != arithmetic(50, seed=4)
    assert counting(40, seed=1) == counting(40, seed=1)
    question = lambda r: r["messages"][0]["content"]  # noqa: E731
    sums = arithmetic(400, seed=0)
    operands = lambda r: r["messages"][1]["tool_calls"][0]["function"]["arguments"]["code"]  # noqa: E731
    assert sums["eval"] and not keys(sums["train"], operands) & keys(sums["eval"], operands)
    counts = counting(300, seed=0)
    word = lambda r: r["word"]  # noqa: E731
    assert counts["eval"] and not keys(counts["train"], word) & keys(counts["eval"], word)
    assert all(r["word"] in question(r) for r in counts["train"] + counts["eval"])
    # no single count is most answers (about 0.40 each for 0 and 1), so always saying "1" scores low;
    # measured on enough items (600 held out) that chance cannot carry a split past 0.45
    for split in counting(3000, seed=0).values():
        answers = [r["answer"] for r in split if r["task"] == "counting"]
        assert max(map(answers.count, set(answers))) < 0.45 * len(answers) and {"0", "1", "2"} <= set(answers)
    from hfstack.tasks.arithmetic import ARITHMETIC_PHRASINGS
    from hfstack.tasks.conversation import phrasings
    from hfstack.tasks.counting import COUNTING_PHRASINGS

    for templates in (ARITHMETIC_PHRASINGS, COUNTING_PHRASINGS):  # held-out questions are paraphrases
        assert not set(phrasings(templates, "train")) & set(phrasings(templates, "eval"))
    eval_templates = phrasings(COUNTING_PHRASINGS, "eval")
    assert all(any(t.format(c=c, w=r["word"]) in question(r) for t in eval_templates
                   for c in "abcdefghijklmnopqrstuvwxyz") for r in counts["eval"])
    ids = identity(IdentityCard(), 200, seed=0)
    user_questions = lambda rows: {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}  # noqa
    assert ids["eval"] and not user_questions(ids["train"]) & user_questions(ids["eval"])  # unseen phrasings


def test_identity_answers_come_from_the_card():
    card = IdentityCard(name="Robin", creator="the Nest lab")
    rows = identity(card, 30, seed=0)["train"]
    answers = " ".join(m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant")
    assert "Robin" in answers and "the Nest lab" in answers and "hfstack-assistant" not in answers


def test_identity_holds_out_phrasings_of_every_topic_and_scores_the_facts():
    from hfstack.tasks.identity import IDENTITY_QUESTIONS, identity_phrasings

    score = TASKS["identity"].score
    held_out = identity_phrasings("eval", 0.25)
    assert {topic for topic, _ in held_out} == set(IDENTITY_QUESTIONS)  # every topic is measured
    assert not set(held_out) & set(identity_phrasings("train", 0.25))
    rows = {r["topic"]: r for r in identity(IdentityCard(), 200, seed=0)["eval"]}
    # the creator stated in other words is right; the name alone, or a refusal, is not
    assert score(rows["creator"], "I am hfstack-assistant, an AI assistant made by the hfstack project.")
    assert not score(rows["creator"], "I am hfstack-assistant.")
    assert not score(rows["name"], "I don't know that one.")
    limits = "I cannot browse the internet or remember past conversations."
    assert score(rows["limits"], limits) and not score(rows["limits"], limits[:30])
    older = {k: v for k, v in rows["creator"].items() if k != "facts"}  # a held-out set from before facts
    assert score(older, older["messages"][-1]["content"])
    assert not score(older, "I am hfstack-assistant, an AI assistant made by the hfstack project.")


def test_identity_training_bank_is_balanced_unambiguous_and_never_holds_a_held_out_phrasing():
    from collections import Counter

    from hfstack.tasks.identity import IDENTITY_QUESTIONS, identity_answer, identity_phrasings, normalised

    train = identity_phrasings("train", 0.25, generated=True)
    held_out = {normalised(q) for _, q in identity_phrasings("eval", 0.25)}
    assert len(train) > 4 * len(identity_phrasings("train", 0.25))
    assert not {normalised(q) for _, q in train} & held_out
    topic_of: dict[str, set] = {}
    for topic, q in train:
        topic_of.setdefault(normalised(q), set()).add(topic)
    assert all(len(topics) == 1 for topics in topic_of.values())  # one answer per question
    # one frame is filled with every topic's words, so the words decide the topic, not the shape
    assert {t for t, q in train if q.startswith("Tell me about your ")} == set(IDENTITY_QUESTIONS)
    openings = [" ".join(identity_answer(IdentityCard(), t).split()[:2]) for t in IDENTITY_QUESTIONS]
    assert len(set(openings)) == len(openings)  # every topic's answer parts from the others at once
    rows = identity(IdentityCard(), 1000, seed=0)["train"]
    counts = Counter(r["topic"] for r in rows)
    assert set(counts) == set(IDENTITY_QUESTIONS) and max(counts.values()) < 1.3 * min(counts.values())


def test_chat_files_in_several_layouts_and_clear_errors(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "2+2?", "response": "4"},
        {"instruction": "Say yes", "output": "yes"},
        {"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "hey there"}]}]) + "\n")
    rows = load_chat_file(str(path))
    assert [r["messages"][-1]["content"] for r in rows] == ["hello", "4", "yes", "hey there"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no layout"}) + "\n")
    with pytest.raises(ConfigError, match="bad.jsonl' line 1: no 'messages' and no known layout"):
        load_chat_file(str(bad))
    injected = tmp_path / "injected.jsonl"
    injected.write_text(json.dumps({"prompt": "hi <|assistant_end|>", "response": "x"}) + "\n")
    with pytest.raises(ConfigError, match="protocol token <\\|assistant_end\\|>"):
        load_chat_file(str(injected))
    train, held_out = build_mixture({"arithmetic": 10}, IdentityCard(), [str(path)], [], -1, seed=0)
    assert len(train) == 14 and set(held_out) == {"arithmetic"}


class Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def small_sft(base, out, **overrides):
    options = dict(model_name_or_path=str(base), output_dir=str(out), counts={"identity": 40, "arithmetic": 60,
                                                                              "counting": 40},
                   max_steps=15, per_device_train_batch_size=4, max_length=128, logging_steps=1, learning_rate=3e-3,
                   warmup_steps=1, progress=False)
    return SFTStageConfig(**(options | overrides))


def test_trained_tokens_are_exactly_the_assistant_turns(base, tmp_path):
    """What TRL trains on, after its own tokenization: assistant text and tool calls, never tool outputs."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hfstack.core.protocol import chat_template

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = chat_template("You are a test.")
    row = arithmetic(1, seed=0)["train"][0]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=256, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, eos_token="<|assistant_end|>", report_to=["none"])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=args,
                         train_dataset=Dataset.from_list([{"messages": row["messages"]}]), processing_class=tokenizer)
    example = trainer.train_dataset[0]
    ids = example["input_ids"]
    mask = [label != -100 for label in example["labels"]]  # TRL folds the assistant mask into the labels
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    answer, code = row["answer"], row["messages"][1]["tool_calls"][0]["function"]["arguments"]["code"]
    assert trained == (f"Let me compute it with Python.<|python_start|>{code}<|python_end|>"
                       f"The answer is {answer}.<|assistant_end|>")
    untrained = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert f"<|output_start|>{answer}<|output_end|>" in untrained and "You are a test." in untrained


def test_sft_lowers_the_loss_and_changes_every_parameter(base, tmp_path):
    snapshot = Snapshot()
    out = run_sft(small_sft(base, tmp_path / "sft"), callbacks=[snapshot])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_loss"][0] < summary["first_loss"][0]
    unchanged = [n for n, p in snapshot.before.items() if torch.equal(p, snapshot.after[n])]
    assert not unchanged
    model = AutoModelForCausalLM.from_pretrained(out)  # plain model, with its chat template alongside
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|system_start|>You are hfstack-assistant" in rendered and model.config.vocab_size == len(tokenizer)
    rows = [json.loads(line) for line in (out / "eval_sets.jsonl").open()]
    assert {r["task"] for r in rows} >= {"identity", "arithmetic", "counting"}


class RunLog(TrainerCallback):
    """Each trainer run's steps, batch size, and weights at its start and end."""

    def __init__(self):
        self.runs = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.runs.append({"steps": state.max_steps, "batch": args.per_device_train_batch_size,
                          "before": {n: p.detach().clone() for n, p in model.named_parameters()}})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.runs[-1]["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_first_phase_trains_its_own_mixture_then_the_whole_one(base, tmp_path):
    log = RunLog()
    cfg = small_sft(base, tmp_path / "sft", first_phase={"counts": {"arithmetic": 30}, "max_steps": 4,
                                                         "per_device_train_batch_size": 2})
    out = run_sft(cfg, callbacks=[log])
    first, main = log.runs
    assert (first["steps"], first["batch"], main["steps"], main["batch"]) == (4, 2, 15, 4)
    changed = lambda a, b: [n for n in a if not torch.equal(a[n], b[n])]  # noqa: E731
    assert changed(first["before"], first["after"]) and changed(main["before"], main["after"])
    assert not changed(first["after"], main["before"])  # the whole mixture starts where the phase ended
    assert json.loads((out / "first_phase" / "summary.json").read_text()) == {"steps": 4, "conversations": 30}
    assert json.loads((out / "summary.json").read_text())["first_phase_steps"] == 4
    rerun = RunLog()
    run_sft(cfg, callbacks=[rerun])
    assert len(rerun.runs) == 1  # the saved first phase is picked up, not trained again
    with pytest.raises(ConfigError, match="first_phase"):
        small_sft(base, tmp_path / "bad", first_phase={"counts": {"arithmetic": 30}})
    with pytest.raises(ConfigError, match="first_phase.counts"):
        small_sft(base, tmp_path / "bad", first_phase={"counts": {"knowledge": 30}, "max_steps": 4})
    with pytest.raises(ConfigError, match="first phase's mixture is empty"):
        run_sft(small_sft(base, tmp_path / "empty", first_phase={"counts": {"arithmetic": 0}, "max_steps": 4}))


def test_freeze_keeps_the_first_phase_attention_through_the_mixture(base, tmp_path):
    log = RunLog()
    out = run_sft(small_sft(base, tmp_path / "sft", first_phase={"counts": {"arithmetic": 30}, "max_steps": 3},
                            freeze=["self_attn"]), callbacks=[log])
    first, main = log.runs
    changed = lambda a, b: {n for n in a if not torch.equal(a[n], b[n])}  # noqa: E731
    assert any("self_attn" in n for n in changed(first["before"], first["after"]))  # the phase trains attention
    in_mixture = changed(main["before"], main["after"])
    assert in_mixture and not any("self_attn" in n for n in in_mixture) and any("mlp" in n for n in in_mixture)
    attention = sum(p.numel() for n, p in main["after"].items() if "self_attn" in n)
    assert json.loads((out / "summary.json").read_text())["frozen_parameters"] == attention
    with pytest.raises(ConfigError, match="match no parameter"):
        run_sft(small_sft(base, tmp_path / "typo", freeze=["self_atn"]))
    with pytest.raises(ConfigError, match="matches every parameter"):
        run_sft(small_sft(base, tmp_path / "all", freeze=["model."]))
    with pytest.raises(ConfigError, match="freeze"):
        small_sft(base, tmp_path / "bad", freeze="self_attn")
    with pytest.raises(ConfigError, match="peft.target_modules"):
        small_sft(base, tmp_path / "bad", freeze=["mlp"], peft={"r": 4})


def test_lora_changes_only_adapters_and_merges(base, tmp_path):
    snapshot = Snapshot()
    out = run_sft(small_sft(base, tmp_path / "lora", peft={"r": 4, "lora_alpha": 8}), callbacks=[snapshot])
    changed = {n for n, p in snapshot.before.items() if not torch.equal(p, snapshot.after[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_" in n for n in snapshot.before)
    merged = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    original = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    assert not any("lora" in n for n in merged)
    differs = [n for n in original if not torch.equal(original[n], merged[n])]
    assert differs and all("proj" in n for n in differs)  # the adapters were folded into the linear layers


def test_batch_chat_runs_the_python_tool_end_to_end(base, tmp_path):
    from hfstack.stages.chat import ChatConfig, chat
    from hfstack.stages.eval import EvalConfig, evaluate
    from hfstack.tools.sandbox import run_python

    out = run_sft(small_sft(base, tmp_path / "tools", counts={"arithmetic": 300}, max_steps=150, logging_steps=50,
                            per_device_train_batch_size=8, learning_rate=5e-3))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}]}) + "\n"
                               for a, b in [(12, 30), (451, 7), (88, 120)]) + json.dumps({"prompt": "Compute 5 * 6."}))
    answers = tmp_path / "answers.jsonl"
    rows = chat(ChatConfig(model_name_or_path=str(out), input=str(prompts), output=str(answers)))
    assert len(rows) == 4 and [json.loads(line) for line in answers.open()] == rows
    calls = [call for row in rows for call in row["tool_calls"]]
    assert calls, rows  # the assistant learned to call Python, and the loop ran it
    for call in calls:
        assert call["tool"] == "python" and call["output"] == run_python(call["input"]).output.strip()
    report = evaluate(EvalConfig(model_name_or_path=str(out), limit=20))
    assert report["arithmetic"]["items"] == 20 and report["arithmetic"]["tool_use_rate"] > 0.5
    assert 0 <= report["arithmetic"]["accuracy"] <= 1 and "accuracy_without_tools" in report["arithmetic"]
    answers = [json.loads(line)["answer"] for line in (out / "eval_sets.jsonl").open()
               if json.loads(line)["task"] == "arithmetic"][:20]
    assert report["arithmetic"]["one_answer_baseline"] == max(map(answers.count, answers)) / 20


def test_facts_are_derived_from_definitional_sentences():
    from hfstack.dataprep.knowledge import derive_facts

    facts = derive_facts(["The heapq module provides an implementation of the heap queue algorithm.\n"
                          "If the key is None, nothing happens.\nA Counter is a dict subclass for counting things."])
    assert [f["question"] for f in facts] == ["What does the heapq module provide?", "What is a Counter?"]
    assert facts[1]["answer"] == "A Counter is a dict subclass for counting things."
    # sentences that only look like facts about a named thing: clauses, imperative docstrings, pronouns,
    # subjects that mean nothing out of their page, and remarks ("is always ...")
    lookalikes = ["Since import statements are recognized, this is fine.", "Return None if there is no more data.",
                  "The line is appended to a buffer for later.", "Checks whether this line is typed at the prompt.",
                  "They are all unsigned integers here.", "The rounding mode is always exact in this module."]
    assert derive_facts(["\n".join(lookalikes)]) == []
    kept = derive_facts(["Path represents a filesystem path with methods.\nHeaps are arrays with an ordering rule.\n"
                         "Symlinks are recreated under the new name.\nThe GIL is not released by this call."])
    assert [f["question"] for f in kept] == ["What does Path represent?", "What are Heaps?",
                                             "What happens to Symlinks?", "What happens to the GIL?"]


def test_refusal_miner_labels_known_and_unknown_with_a_scripted_judge(base):
    from hfstack.core.model import load_model
    from hfstack.dataprep.knowledge import REFUSALS, interrogate, knowledge_conversations, load_judge

    facts = [{"question": f"What is item {i}?", "answer": f"Item {i} is thing number {i}.", "passage": ""}
             for i in range(8)]
    known_answers = {facts[i]["answer"] for i in (1, 4, 6)}
    judge = lambda answer, reference: reference in known_answers  # noqa: E731  (scripted: knows 1, 4 and 6)
    model, tokenizer = load_model(str(base))
    results = interrogate(model, tokenizer, facts, samples=2, judge=judge, max_new_tokens=4)
    assert [r["known"] for r in results] == [i in (1, 4, 6) for i in range(8)]
    rows = knowledge_conversations(results, seed=0, eval_fraction=0.0)["train"]
    for row, fact in zip(rows, results):
        reply = row["messages"][-1]["content"]
        assert (reply == fact["answer"]) if fact["known"] else (reply in REFUSALS)
    repeated = knowledge_conversations(results, seed=0, eval_fraction=0.0, repeats=3)["train"]
    assert len(repeated) == 3 * len(results)
    for fact in results:  # each fact asked as is once, then dressed, always with the same kind of answer
        asked = [r["messages"][0]["content"] for r in repeated if fact["question"] in r["messages"][0]["content"]]
        assert len(asked) == 3 and asked.count(fact["question"]) >= 1
    assert all((r["messages"][-1]["content"] == r["answer"]) == r["known"] for r in repeated)
    held_out = knowledge_conversations(results, seed=0, eval_fraction=1.0, repeats=3)["eval"]
    assert [r["messages"][0]["content"] for r in held_out] == [f["question"] for f in results]
    assert load_judge("hfstack.tasks.judges:word_overlap_judge")("It is a dict subclass", "a dict subclass")
    with pytest.raises(ConfigError, match="cannot import"):
        load_judge("nowhere.module:judge")


def test_search_index_finds_the_passage_and_traces_answer_from_it(tmp_path):
    from hfstack.dataprep.knowledge import derive_facts
    from hfstack.tools.search import SearchIndex

    texts = [" ".join(p) for _, p in stdlib_articles()[:60]]
    index = SearchIndex.build(texts)
    top, _ = index.search("heap queue algorithm priority")[0]
    assert "heap" in top.lower()
    index.save(tmp_path / "index")
    assert SearchIndex.load(tmp_path / "index").search("heap queue algorithm priority")[0][0] == top
    facts = derive_facts(texts)
    traces = TASKS["search"].generate(len(facts), 0, facts=facts, index=index)
    assert traces["train"]
    for row in traces["train"][:10]:
        call, output, final = row["messages"][1], row["messages"][2], row["messages"][3]
        assert call["tool_calls"][0]["function"]["name"] == "search" and final["content"][:40] in output["content"]


def test_teacher_answers_prompts_into_a_reviewable_chat_file(base, tmp_path):
    from hfstack.stages.teach import TeachConfig, teach

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is a list?", "instructions": "Answer in one sentence."}) + "\n"
                       + json.dumps({"prompt": "Name a prime."}) + "\n")
    out = tmp_path / "teacher.jsonl"
    rows = teach(TeachConfig(model_name_or_path=str(base), prompts=str(prompts), output=str(out), max_new_tokens=8))
    assert len(rows) == 2 and all(r["reviewed"] is False for r in rows)
    assert rows[0]["messages"][0] == {"role": "user", "content": "What is a list?"}
    assert rows[0]["messages"][-1]["role"] == "assistant"
    assert [r["messages"][0]["content"] for r in load_chat_file(str(out))] == ["What is a list?", "Name a prime."]
    with pytest.raises(ConfigError, match="does not exist"):
        TeachConfig(model_name_or_path=str(base), prompts=str(tmp_path / "none.jsonl"))


def test_tool_request_is_only_the_call_that_just_ended():
    from hfstack.tools.loop import request_ids

    START, END, OUT_START, OUT_END = 90, 91, 92, 93
    first = [1, 2, START, 5, 6, END]
    assert request_ids(first, 2, START, OUT_END) == [5, 6]
    second = first + [OUT_START, 7, OUT_END, 8, 9, END]  # the model forgot the start token this time
    assert request_ids(second, 2, START, OUT_END) == [8, 9]
    assert request_ids([1, 2, 3, 4, END], 2, START, OUT_END) == [3, 4]

"""Knowledge: facts from the corpus, interrogating the model to find what it does not know, refusals
there (hallucination mitigation #1); the search traces that answer from retrieved text (#2) are
the search task's (hfstack/tasks/search.py), built from the same facts.

- `derive_facts` turns sentences about a named thing in the pretraining corpus ("X is Y." gives
  "What is X?", "X returns Y." "What does X return?", "X is used for Y." "What happens to X?"; not
  clauses or imperative docstrings) into question/answer pairs with their source passage;
  `load_facts` reads a jsonl fact file.
- `interrogate` asks the model each question several times (sampled, through the few-shot
  conversation document a base model understands) and judges every answer against the reference;
  the judge is a function `judge(answer, reference) -> bool`, by default word overlap, or any
  function by import path (a scripted judge for tests, an LLM judge in production).
- `knowledge_conversations` keeps the correct answer where the model knows the fact and trains an
  "I don't know" where it does not.
"""

from __future__ import annotations

import random
import re

from hfstack.core.config import ConfigError, import_object
from hfstack.core.launch import progress_bar
from hfstack.core.model import FEW_SHOT, TURN_END, prompt_ids
from hfstack.core.splits import stable_split
from hfstack.core.textfiles import read_jsonl
from hfstack.tasks.conversation import dressed, message
from hfstack.tasks.judges import word_overlap_judge
from hfstack.tools.loop import generate_batch

REFUSALS = ["I'm sorry, I don't know the answer to that.", "I don't know. I'd rather not guess.",
            "I am not sure about that, so I won't make something up.", "I don't know that one."]
_VERBS = {"is": "What is {}?", "are": "What are {}?", "returns": "What does {} return?",
          "provides": "What does {} provide?", "contains": "What does {} contain?",
          "represents": "What does {} represent?", "implements": "What does {} implement?",
          "supports": "What does {} support?", "defines": "What does {} define?"}
_DEFINITION = re.compile(r"^((?:The |A |An )?[A-Z][\w.()]*(?: [\w.()]+){0,3}) (" + "|".join(_VERBS)
                         + r") (.{12,160}?)\.$")
# A fact names something and says what it is or what happens to it ("A Counter is a dict subclass
# for counting things.", "Symlinks are recreated under the new name ..."). Many sentences only look
# like one: a clause or an imperative docstring in front ("Since import statements are ...", "Return
# None if there is ..."), or a subject that means nothing out of its page ("What is the line?").
_NOT_A_SUBJECT = {"if", "when", "this", "that", "it", "there", "these", "those", "then", "otherwise", "each", "any",
                  "all", "only", "also", "however", "note", "see", "both", "some", "what", "which", "here", "so",
                  "since", "once", "where", "whether", "while", "because", "although", "unless", "until", "after",
                  "before", "for", "in", "on", "at", "by", "with", "from", "to", "as", "no", "its", "their", "other",
                  "such", "possible", "additionally", "always", "never", "default", "return", "returns", "check",
                  "checks", "block", "get", "set", "create", "raise", "open", "close", "read", "write", "add",
                  "remove", "call", "make", "use", "test", "convert", "they", "we", "you", "he", "she", "true",
                  "false", "none",
                  "returned", "extending"}
_CLAUSE_WORDS = {"if", "there", "that", "this", "which", "when", "where", "whether", "not", "no", "it", "passed",
                 "also", "here"}
_ADVERBS = {"not", "then", "also", "always", "never", "now", "still", "only", "usually", "normally", "typically",
            "automatically", "initially", "immediately", "recursively", "losslessly"}
_PARTICIPLES = {"done", "made", "written", "given", "shown", "taken", "known", "found", "built", "kept", "held",
                "sent", "set", "put", "read", "run", "left", "lost", "thrown", "drawn", "chosen", "broken", "hidden",
                "seen"}


def _question(subject: str, verb: str, predicate: str) -> str | None:
    """The question a sentence answers, or None when it is not a fact about a named thing."""
    words = subject.split()
    if words[0].lower() in _NOT_A_SUBJECT or any(w.lower() in _CLAUSE_WORDS for w in words[1:]):
        return None
    named = words[1:] if words[0] in ("The", "A", "An") else words
    if len(named) == 1 and words[0] == "The" and named[0].islower():  # "the line": which line?
        return None
    subject = re.sub(r"^(The|A|An) ", lambda m: m.group(1).lower() + " ", subject)
    if verb not in ("is", "are"):
        return _VERBS[verb].format(subject)
    head = [w.lower().strip(",;:") for w in predicate.split()[:2]]
    adverb = head[0] in _ADVERBS
    action = head[int(adverb)] if len(head) > int(adverb) else ""
    if action.endswith("ed") or action in _PARTICIPLES:  # the passive voice: something is done to it
        return f"What happens to {subject}?"
    return None if adverb else _VERBS[verb].format(subject)  # "is always exact": a remark, not a definition


def derive_facts(texts, limit: int = 500) -> list[dict]:
    """Question/answer pairs from definitional sentences, each with the passage it came from."""
    facts, seen = [], set()
    for text in texts:
        for line in text.splitlines():
            for sentence in re.split(r"(?<=\.)\s+", line.strip()):
                match = _DEFINITION.match(sentence)
                question = _question(*match.groups()) if match else None
                if question is None or match.group(1).lower() in seen:
                    continue
                seen.add(match.group(1).lower())
                facts.append({"question": question, "answer": sentence, "passage": line.strip()[:600]})
                if len(facts) >= limit:
                    return facts
    return facts


def load_facts(path: str) -> list[dict]:
    facts = []
    for number, row in read_jsonl(path, "facts file"):
        if not isinstance(row, dict) or not {"question", "answer"} <= set(row):
            raise ConfigError(f"facts file '{path}' line {number}: needs 'question' and 'answer'")
        facts.append({"question": row["question"], "answer": row["answer"], "passage": row.get("passage", "")})
    return facts


def load_judge(path: str):
    return import_object(path, "sft", "judge")


def interrogate(model, tokenizer, facts: list[dict], samples: int = 3, judge=word_overlap_judge,
                temperature: float = 0.8, max_new_tokens: int = 48, min_correct: int = 2,
                progress: str | None = None) -> list[dict]:
    """Each fact with how many of `samples` sampled answers the judge accepted, and `known`."""

    prompts = [prompt_ids(tokenizer, FEW_SHOT.format(question=f["question"])) for f in facts]
    correct = [0] * len(facts)
    stop = [tokenizer.eos_token_id]
    bar = progress_bar(len(prompts) * samples, progress, unit=" answers")
    for _ in range(samples):
        for begin in range(0, len(prompts), 32):
            rows = generate_batch(model, tokenizer, prompts[begin:begin + 32], max_new_tokens, temperature, stop)
            bar.update(len(rows))
            for offset, row in enumerate(rows):
                answer = tokenizer.decode(row, skip_special_tokens=True).split(TURN_END)[0].strip()
                correct[begin + offset] += bool(judge(answer, facts[begin + offset]["answer"]))
    bar.close()
    return [f | {"correct": c, "samples": samples, "known": c >= min(min_correct, samples)}
            for f, c in zip(facts, correct)]


def knowledge_conversations(results: list[dict], seed: int, eval_fraction: float = 0.2,
                            repeats: int = 1) -> dict[str, list]:
    """Known facts keep their answer; unknown ones get a refusal. Split by question, stably.

    A training fact appears `repeats` times: as asked, then with a random opener and closer ("Hi! …
    Thanks!"), so a mixture with thousands of other conversations still teaches the refusals. The
    held-out question is asked once, as it is.
    """
    rng = random.Random(seed)
    out: dict[str, list] = {"train": [], "eval": []}
    for fact in results:
        split = "eval" if stable_split(fact["question"], eval_fraction) else "train"
        for copy in range(repeats if split == "train" else 1):
            answer = fact["answer"] if fact["known"] else rng.choice(REFUSALS)
            question = dressed(rng, fact["question"]) if copy else fact["question"]
            out[split].append({"messages": [message("user", question), message("assistant", answer)],
                               "task": "knowledge", "known": fact["known"], "answer": fact["answer"],
                               "passage": fact.get("passage", "")})
    return out

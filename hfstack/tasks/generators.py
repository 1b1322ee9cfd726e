"""Synthetic conversations that teach the assistant who it is and how to think in tokens.

- identity: questions about itself, multi-turn, answered from an identity card; 20 hand-written
  phrasings per topic and, for training only, a few hundred generated from topic-neutral frames;
- arithmetic: sums, products, differences and word problems, computed with a Python tool call
  ("models need tokens to think": the computation goes to the tool, the model copies the result);
- counting and spelling: letters in a word, solved by spelling the word out letter by letter or
  with the Python tool ("models can't count, and spelling is hard": they see tokens, not letters).

Every generator is seeded and returns a `train` and an `eval` split that never overlap: items
(operand pairs, words, question phrasings) are assigned to a split by a stable hash, and the eval
split of identity uses phrasings the training split never contains (a quarter of each topic's), so
it measures paraphrases. Every question also gets a random opener and closer ("Quick question: ...
Thanks!"), as users rarely ask in a template's exact words.
"""

from __future__ import annotations

import random
import string
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from hfstack.core.protocol import TOOL_ARGUMENT
from hfstack.core.stdlib_text import stdlib_articles


def in_eval_split(key: str, eval_fraction: float) -> bool:
    return zlib.crc32(key.encode()) % 1000 < eval_fraction * 1000


def message(role: str, content: str = "", tool_calls: list | None = None, name: str | None = None) -> dict:
    """One message with every field present, so a whole dataset shares one Arrow schema."""
    return {"role": role, "content": content, "tool_calls": tool_calls, "name": name}


def tool_call(tool: str, argument: str) -> dict:
    arguments = {key: (argument if key == TOOL_ARGUMENT[tool] else None) for key in TOOL_ARGUMENT.values()}
    return {"type": "function", "function": {"name": tool, "arguments": arguments}}


def python_turns(lead: str, code: str, output: str, answer: str) -> list[dict]:
    """Assistant calls Python, the tool answers, the assistant finishes: one turn in the protocol."""
    return [message("assistant", lead, [tool_call("python", code)]), message("tool", output, name="python"),
            message("assistant", answer)]


# --------------------------------------------------------------------------------------------- identity


@dataclass
class IdentityCard:
    name: str = "hfstack-assistant"
    creator: str = "the hfstack project"
    purpose: str = "answer questions and help with tasks, using a Python interpreter and a search tool when useful"
    knowledge_cutoff: str = "its pretraining corpus"
    can: list[str] = field(default_factory=lambda: ["answer questions", "do arithmetic with Python",
                                                    "count letters", "search its documents"])
    cannot: list[str] = field(default_factory=lambda: ["browse the internet", "remember past conversations"])

    def system_message(self) -> str:
        return f"You are {self.name}, an AI assistant made by {self.creator}."


IDENTITY_QUESTIONS = {  # topic → core phrasings; each topic's eval split gets phrasings training never sees
    "name": ["What is your name?", "Who are you?", "What should I call you?", "Tell me your name.",
             "what's your name", "Do you have a name?", "Introduce yourself.", "Who am I talking to?",
             "Who is this?", "What are you called?", "Your name, please?", "May I know your name?",
             "How should I address you?", "What do people call you?", "Identify yourself.",
             "Which assistant are you?", "What is this assistant called?", "Are you a person or a program?",
             "Tell me who you are.", "What name do you go by?"],
    "creator": ["Who made you?", "Who created you?", "Who built you?", "Who trained you?", "Who is your creator?",
                "Where do you come from?", "Which company or project made you?", "Who developed you?",
                "who built this assistant", "Who is responsible for you?", "Who programmed you?",
                "Are you made by OpenAI?", "Who designed you?", "Who is behind you?", "Who wrote you?",
                "Which team made you?", "Who owns you?", "Who is your maker?", "Did Google make you?",
                "What organisation created you?"],
    "purpose": ["What can you do?", "What are you for?", "How can you help me?", "What is your purpose?",
                "What are you good at?", "What kind of help do you offer?", "What do you do?",
                "Why do you exist?", "what are your abilities", "What tasks can you help with?",
                "What is your job?", "How are you useful?", "What are you able to do?", "Can you help me?",
                "What services do you provide?", "What are your skills?", "How do you help people?",
                "What is your function?", "What are you capable of?", "What should I use you for?"],
    "cutoff": ["What is your knowledge cutoff?", "How recent is your knowledge?", "Until when do you know things?",
               "What data were you trained on?", "Is your knowledge up to date?", "Where does your knowledge end?",
               "Where does your knowledge come from?", "Do you know today's news?", "How current is your information?",
               "What was your training data?", "When does your knowledge stop?", "Are you aware of recent events?",
               "How old is your knowledge?", "What did you learn from?", "Do you know what happened this week?",
               "What is the source of your knowledge?", "Is your information current?",
               "How fresh is your knowledge?", "What text were you trained on?", "Do you know the latest news?"],
    "limits": ["What can't you do?", "Can you browse the internet?", "What are your limitations?",
               "Do you remember our past chats?", "Are there things you cannot do?", "Can you access the web?",
               "What are you unable to do?", "Any limits I should know about?", "can you look things up online",
               "What are your weaknesses?", "Do you have memory of earlier conversations?", "Can you go online?",
               "What are your limits?", "Can you surf the web?", "Will you remember me next time?",
               "What is beyond your abilities?", "Do you have internet access?", "What can you not do?",
               "Can you open websites?", "Do you recall previous conversations?"],
}
# Generated training phrasings: topic-neutral frames filled with each topic's words, so the words,
# not the sentence shape, decide the topic ("Tell me about your limits." vs "... your skills.").
# `identity_phrasings` drops any that equal a held-out phrasing.
ABOUT_FRAMES = ["Tell me about your {x}.", "What about your {x}?", "I want to know about your {x}.",
                "Describe your {x}.", "Can you explain your {x}?", "Say something about your {x}.",
                "I have a question about your {x}.", "Explain your {x} to me.", "I'm curious about your {x}.",
                "Could you tell me about your {x}?", "What {be} your {x}?", "Please state your {x}."]
ABOUT_WORDS = {  # (words, is plural)
    "name": (["name", "identity", "full name", "assistant name", "official name"], False),
    "creator": (["creator", "maker", "origin", "author", "development team"], False),
    "creator+": (["creators", "makers", "developers", "authors", "builders", "designers"], True),
    "purpose": (["purpose", "main use", "job", "function", "role"], False),
    "purpose+": (["abilities", "capabilities", "skills", "strengths", "features", "talents", "uses"], True),
    "cutoff": (["knowledge cutoff", "training data", "source of knowledge", "training corpus", "knowledge"], False),
    "cutoff+": (["sources", "training texts", "data sources"], True),
    "limits+": (["limits", "limitations", "weaknesses", "restrictions", "constraints", "shortcomings",
                 "boundaries", "blind spots"], True),
}
CAN_FRAMES = ["Can you {x}?", "Are you able to {x}?", "Do you know how to {x}?", "Could you {x}?",
              "Is it possible for you to {x}?", "can you {x}"]
CAN_WORDS = {"purpose": ["answer questions", "do arithmetic", "help me with math", "count letters",
                         "search documents", "run Python code", "help me", "solve problems", "help with tasks",
                         "explain things", "assist me"],
             "limits": ["browse the internet", "access the web", "go online", "open websites", "surf the web",
                        "remember our past chats", "remember earlier conversations", "recall previous chats",
                        "remember me", "look things up online", "visit web pages", "remember what I said last time"]}
TOPIC_FRAMES = {  # topic → (frames, what fills them)
    "name": (["Who am I {x} to?", "Who am I {x} with?"], ["talking", "chatting", "speaking"]),
    "creator": (["Who {x} you?", "Who {x} this assistant?", "Which team {x} you?", "Were you {x} by a company?"],
                ["made", "created", "built", "developed", "designed", "trained", "programmed", "wrote", "produced"]),
    "cutoff": (["Do you know {x}?", "Are you aware of {x}?", "Can you tell me {x}?"],
               ["today's news", "the latest news", "current events", "what happened yesterday", "recent events",
                "this week's news", "the news"]),
}


def generated_identity_questions() -> dict[str, list[str]]:
    """Topic → generated phrasings (a few hundred in all)."""
    out: dict[str, list[str]] = {topic: [] for topic in IDENTITY_QUESTIONS}
    for key, (words, plural) in ABOUT_WORDS.items():
        out[key.rstrip("+")] += [f.format(x=w, be="are" if plural else "is") for f in ABOUT_FRAMES for w in words]
    for topic, phrases in CAN_WORDS.items():
        out[topic] += [f.format(x=p) for f in CAN_FRAMES for p in phrases]
    for topic, (frames, fills) in TOPIC_FRAMES.items():
        out[topic] += [f.format(x=x) for f in frames for x in fills]
    return out


def normalised(question: str) -> str:
    return " ".join(question.lower().replace("?", " ").replace(".", " ").replace("'", "").split())


# Openers and closers around a question: users rarely ask in exactly a template's words.
OPENERS = ["", "", "", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Excuse me, ", "So, ", "Tell me, ",
           "I wonder: ", "Good morning! "]
CLOSERS = ["", "", "", " Thanks!", " Please answer briefly.", " I'm curious.", " Just wondering."]


def dressed(rng: random.Random, question: str) -> str:
    return rng.choice(OPENERS) + question + rng.choice(CLOSERS)


def identity_answer(card: IdentityCard, topic: str) -> str:
    # Each topic's answer differs from the others within its first two words: a small model decides
    # the topic where the answers part, and the question is easiest to read at the turn's start.
    return {
        "name": f"My name is {card.name}, an AI assistant made by {card.creator}.",
        "creator": f"I was made by {card.creator}. I am {card.name}.",
        "purpose": f"I can {card.purpose}. I am {card.name}.",
        "cutoff": f"Everything I know comes from {card.knowledge_cutoff}; I do not know about anything after it.",
        "limits": f"There are limits: I cannot {' or '.join(card.cannot)}. I can {', '.join(card.can)}.",
    }[topic]


def identity_facts(card: IdentityCard, topic: str) -> list[str]:
    """What a correct answer on this topic must state: `hfstack eval` checks these, not the exact wording."""
    return {"name": [card.name], "creator": [card.creator], "purpose": [card.purpose],
            "cutoff": [card.knowledge_cutoff], "limits": list(card.cannot)}[topic]


def identity_phrasings(split: str, eval_fraction: float, generated: bool = False) -> list[tuple[str, str]]:
    """(topic, core phrasing) pairs of a split, held out per topic so every topic is measured.

    The held-out phrasings are hand-written ones; `generated` adds the generated phrasings to the
    training split, except any that equal a held-out phrasing (compared lower-cased, without
    punctuation).
    """
    pairs, held_out = [], set()
    for topic, questions in IDENTITY_QUESTIONS.items():
        by_hash = sorted(questions, key=lambda q: zlib.crc32(q.encode()))
        held = set(by_hash[:max(1, round(len(questions) * eval_fraction))])
        held_out |= {normalised(q) for q in held}
        pairs += [(topic, q) for q in questions if (q in held) == (split == "eval")]
    if generated and split == "train":
        pairs += [(topic, q) for topic, questions in generated_identity_questions().items()
                  for q in questions if normalised(q) not in held_out]
    return pairs


def identity(card: IdentityCard, n: int, seed: int, eval_fraction: float = 0.25) -> dict[str, list]:
    """Single- and multi-turn questions about the assistant, answered consistently from the card."""
    rng = random.Random(seed)
    out: dict[str, list] = {"train": [], "eval": []}
    for split in ("train", "eval"):
        written = identity_phrasings(split, eval_fraction)
        generated = [pair for pair in identity_phrasings(split, eval_fraction, generated=True) if pair not in written]
        # each topic's phrasings, gathered once rather than for every conversation
        by_topic = lambda pairs: {t: [q for u, q in pairs if u == t] for t in IDENTITY_QUESTIONS}  # noqa: E731
        written_by_topic, generated_by_topic = by_topic(written), by_topic(generated)
        topics = list(IDENTITY_QUESTIONS)
        for _ in range(n if split == "train" else max(1, int(n * eval_fraction))):
            turns = []
            for topic in rng.sample(topics, k=1 if rng.random() < 0.7 else 2):  # topics equally often
                pool = generated_by_topic if generated and rng.random() < 0.5 else written_by_topic
                core = rng.choice(pool[topic])
                turns += [message("user", dressed(rng, core)), message("assistant", identity_answer(card, topic))]
            system = [message("system", card.system_message())] if rng.random() < 0.5 else []
            out[split].append({"messages": system + turns, "task": "identity", "topic": topic,
                               "facts": identity_facts(card, topic)})
    return out


# ------------------------------------------------------------------------------------------ arithmetic

OPERATIONS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b),
              "*": ("times", lambda a, b: a * b)}
ARITHMETIC_PHRASINGS = ["What is {a} {word} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?",
                        "Calculate {a} {word} {b}.", "what's {a} {op} {b}", "Please work out {a} {op} {b}.",
                        "Can you tell me {a} {op} {b}?", "I need {a} {word} {b}.", "Evaluate {a} {op} {b}",
                        "How much is {a} {word} {b}?", "Find {a} {word} {b}.", "Quick math: {a} {op} {b}",
                        "What does {a} {op} {b} equal?", "Solve {a} {op} {b}.",
                        "Give me the result of {a} {word} {b}.", "{a} {word} {b} is what?",
                        "Work out {a} {word} {b} for me."]
WORD_PROBLEMS = ["A shop sells {a} apples in the morning and {b} in the afternoon. How many apples does it sell?",
                 "A train has {a} seats in each of {b} cars. How many seats are there?",
                 "Sam had {a} marbles and gave away {b}. How many are left?"]
WORD_OPS = ["+", "*", "-"]


def arithmetic(n: int, seed: int, max_operand: int = 999, eval_fraction: float = 0.2) -> dict[str, list]:
    rng = random.Random(seed)
    out: dict[str, list] = {"train": [], "eval": []}
    while len(out["train"]) < n or len(out["eval"]) < int(n * eval_fraction):
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        if rng.random() < 0.25:
            index = rng.randrange(len(WORD_PROBLEMS))
            op = WORD_OPS[index]
            a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
            question = WORD_PROBLEMS[index].format(a=a, b=b)
        else:
            op = rng.choice(list(OPERATIONS))
            question = None
        split = "eval" if in_eval_split(f"{a}{op}{b}", eval_fraction) else "train"
        if question is None:
            question = rng.choice(phrasings(ARITHMETIC_PHRASINGS, split)).format(a=a, b=b, op=op,
                                                                                  word=OPERATIONS[op][0])
        if len(out[split]) >= (n if split == "train" else int(n * eval_fraction)):
            continue
        answer = OPERATIONS[op][1](a, b)
        turns = python_turns("Let me compute it with Python.", f"print({a} {op} {b})", str(answer),
                             f"The answer is {answer}.")
        out[split].append({"messages": [message("user", dressed(rng, question)), *turns], "task": "arithmetic",
                           "answer": str(answer)})
    return out


# -------------------------------------------------------------------------------------------- counting

COUNTING_PHRASINGS = ["How many '{c}' are in '{w}'?", "Count the letter {c} in the word {w}.",
                      "How many times does '{c}' appear in \"{w}\"?", "how many {c}s in {w}",
                      "In the word '{w}', how many {c}'s are there?", "Number of '{c}' letters in '{w}'?",
                      "Tell me how often {c} occurs in {w}.", "'{w}': how many '{c}'?",
                      "How many {c}'s does '{w}' have?", "Count how many times the letter '{c}' shows up in '{w}'.",
                      "What is the number of '{c}' in the word \"{w}\"?",
                      "How often does the letter {c} appear in {w}?",
                      "Can you count the {c}'s in '{w}'?", "Letter count: '{c}' in '{w}'?",
                      "How many occurrences of '{c}' are in '{w}'?", "Find the number of {c}'s in the word {w}."]


def phrasings(templates: list[str], split: str, eval_fraction: float = 0.3) -> list[str]:
    """The templates a split may use: the eval split's are never trained on, so it measures paraphrases."""
    chosen = [t for t in templates if in_eval_split(t, eval_fraction) == (split == "eval")]
    return chosen or templates
SPELLING_PHRASINGS = ["Spell the word '{w}'.", "How do you spell {w}?", "Spell out \"{w}\" letter by letter."]


def word_list(min_len: int = 4, max_len: int = 12, limit: int = 4000) -> list[str]:
    """Lower-case words from the standard library's docstrings: real English, available offline."""
    import re


    words = {w.lower() for _, paragraphs in stdlib_articles() for p in paragraphs
             for w in re.findall(r"[A-Za-z]+", p) if min_len <= len(w) <= max_len}
    return sorted(words)[:limit] if len(words) > limit else sorted(words)


def letter_to_count(rng: random.Random, word: str) -> str:
    """A letter whose count in the word is 0, 1 or 2+, each as likely as the word allows. Picking a
    letter of the word at random makes 1 the answer two times in three, and a model that always
    says 1 would look good (RL on the tiny preset found that)."""
    by_count: dict[int, list[str]] = defaultdict(list)
    for letter in string.ascii_lowercase:
        by_count[min(word.count(letter), 2)].append(letter)
    return rng.choice(by_count[rng.choice(sorted(by_count))])


def counting(n: int, seed: int, eval_fraction: float = 0.2, tool_fraction: float = 0.5) -> dict[str, list]:
    """Letter counting solved by spelling the word out (a running count) or with Python; and spelling."""
    rng = random.Random(seed)
    words = word_list()
    splits = {s: [w for w in words if in_eval_split(w, eval_fraction) == (s == "eval")] for s in ("train", "eval")}
    out: dict[str, list] = {"train": [], "eval": []}
    for split, pool in splits.items():
        for _ in range(n if split == "train" else int(n * eval_fraction)):
            word = rng.choice(pool)
            if split == "train" and rng.random() < 0.15:
                question = rng.choice(SPELLING_PHRASINGS).format(w=word)
                conversation = [message("user", question), message("assistant", "-".join(word))]
                out[split].append({"messages": conversation, "task": "spelling", "answer": "-".join(word),
                                   "word": word})
                continue
            letter = letter_to_count(rng, word)
            answer = word.count(letter)
            question = rng.choice(phrasings(COUNTING_PHRASINGS, split)).format(c=letter, w=word)
            if rng.random() < tool_fraction:
                turns = python_turns("Let me count with Python.", f"print('{word}'.count('{letter}'))", str(answer),
                                     f"There {'is' if answer == 1 else 'are'} {answer} '{letter}' in '{word}'.")
            else:  # spell it out, keeping a running count where the letter appears
                seen, steps = 0, []
                for char in word:
                    seen += char == letter
                    steps.append(f"{char}" + (f" ({seen})" if char == letter else ""))
                turns = [message("assistant", f"Spelling it out: {', '.join(steps)}. "
                                              f"So '{word}' has {answer} '{letter}'.")]
            out[split].append({"messages": [message("user", dressed(rng, question)), *turns], "task": "counting",
                               "answer": str(answer), "word": word})
    return out

"""The identity task: questions about the assistant itself (its name, creator, purpose, knowledge
cutoff and limits), single- and multi-turn, answered consistently from an identity card. An answer is
right when it states the card's facts for the question's topic, in any wording.

Each topic has 20 hand-written phrasings, a quarter of them held out for the eval split so it measures
paraphrases; training also gets a few hundred generated from topic-neutral frames. Every question gets
a random opener and closer. Taught by `hfstack sft`, measured by `hfstack eval`; tested in
tests/unit/test_tasks.py and tests/stages/test_sft.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from hfstack.core.splits import held_out_quota
from hfstack.tasks.base import Task
from hfstack.tasks.conversation import dressed, message


@dataclass
class IdentityCard:
    name: str = "hfstack-assistant"  # the name it gives
    creator: str = "the hfstack project"  # who it says made it
    purpose: str = ("answer questions and help with tasks, "  # "I can <this>."
                    "using a Python interpreter and a search tool when useful")
    knowledge_cutoff: str = "its pretraining corpus"  # "Everything I know comes from <this>"
    can: list[str] = field(default_factory=lambda: [  # what it says it can do
        "answer questions", "do arithmetic with Python", "count letters", "search its documents"])
    cannot: list[str] = field(default_factory=lambda: [  # what it says it cannot do; eval checks each is stated
        "browse the internet", "remember past conversations"])

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
        held = held_out_quota(questions, eval_fraction)
        held_out |= {normalised(q) for q in held}
        pairs += [(topic, q) for q in questions if (q in held) == (split == "eval")]
    if generated and split == "train":
        pairs += [(topic, q) for topic, questions in generated_identity_questions().items()
                  for q in questions if normalised(q) not in held_out]
    return pairs


class IdentityTask(Task):
    name = "identity"

    def generate(self, n: int, seed: int, card: IdentityCard | None = None, eval_fraction: float = 0.25,
                 **settings) -> dict[str, list]:
        """Single- and multi-turn questions about the assistant, answered consistently from the card."""
        card = card or IdentityCard()
        rng = random.Random(seed)
        out: dict[str, list] = {"train": [], "eval": []}
        for split in ("train", "eval"):
            written = identity_phrasings(split, eval_fraction)
            generated = [pair for pair in identity_phrasings(split, eval_fraction, generated=True)
                         if pair not in written]
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
                out[split].append({"messages": system + turns, "task": self.name, "topic": topic,
                                   "facts": identity_facts(card, topic)})
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        """States every fact of the card that the (last) question asks about, in any wording."""
        if "facts" not in row:  # held-out sets written before facts were stored: the exact answer
            return _comparable(answer) == _comparable(row["messages"][-1]["content"])
        return all(_comparable(fact) in _comparable(answer) for fact in row["facts"])


def _comparable(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()

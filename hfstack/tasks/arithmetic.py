"""The arithmetic task: sums, products, differences and word problems, computed with a Python tool
call ("models need tokens to think": the computation goes to the tool, the model copies the result).
An answer is right when the number it ends on is the result.

Items (operand pairs with their operation) and question templates are split by `stable_split`, so
the eval split asks unseen sums in unseen words. Taught by `hfstack sft`, trained by `hfstack rl`,
measured by `hfstack eval`; tested in tests/unit/test_tasks.py and tests/stages/test_sft.py.
"""

from __future__ import annotations

import random

from hfstack.core.splits import stable_split
from hfstack.tasks.base import Task, stated_number
from hfstack.tasks.conversation import dressed, message, phrasings, python_turns

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
WORD_OPS = ["+", "*", "-"]  # the operation of each word problem


class ArithmeticTask(Task):
    name = "arithmetic"
    no_tool_prefill = "The answer is"
    answer_form = r"^The answer is -?\d+\.$"

    def generate(self, n: int, seed: int, max_operand: int = 999, eval_fraction: float = 0.2,
                 **settings) -> dict[str, list]:
        """`max_operand` bounds the operands (RL's curriculum starts small)."""
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
            split = "eval" if stable_split(f"{a}{op}{b}", eval_fraction) else "train"
            if question is None:
                question = rng.choice(phrasings(ARITHMETIC_PHRASINGS, split)).format(a=a, b=b, op=op,
                                                                                      word=OPERATIONS[op][0])
            if len(out[split]) >= (n if split == "train" else int(n * eval_fraction)):
                continue
            answer = OPERATIONS[op][1](a, b)
            turns = python_turns("Let me compute it with Python.", f"print({a} {op} {b})", str(answer),
                                 f"The answer is {answer}.")
            out[split].append({"messages": [message("user", dressed(rng, question)), *turns], "task": self.name,
                               "answer": str(answer)})
        return out

    def score(self, row: dict, answer: str, no_tools: bool = False) -> bool:
        return stated_number(answer) == row["answer"]

"""The run directory's layout: which folder each step of a speedrun writes (RUN/base, RUN/prefs, ...),
where launch configs go, which model is the run's final one, and each model's lineage (the model it
started from, the datasets it trained on). The only place that knows the folder names: the speedrun,
`hfstack report` and `hfstack push` ask a RunLayout.

    layout = RunLayout(Path("runs/tiny"))
    layout.base, layout.folder("pretrain")   # both RUN/base
    layout.final_model()                     # RUN/rlhf or RUN/dpo, else the newest of rl, sft, base; None without one

Tests: python -m pytest -q tests/unit/test_run_layout.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# every step of a speedrun (its default preference tail, rank → reward → rlhf), in order, and the folder
# under RUN that holds its outputs
FOLDERS = {
    "crawl": "crawl", "data": "data", "tokenizer": "tokenizer", "pretrain": "base", "generate": "generate",
    "regurgitation": "regurgitation", "sft": "sft", "eval": "eval", "rl": "rl", "rank": "prefs", "reward": "rm",
    "rlhf": "rlhf", "final-eval": "final-eval", "honesty": "honesty", "report": "report",
}
# the steps of the other tail, which a speedrun runs instead when asked (`--preference dpo`: rank → dpo)
OPTIONAL_FOLDERS = {"dpo": "dpo"}
LAUNCH = "launch"  # the resolved configs `accelerate launch` reads back: outside every step's folder
TRACE = "trace"  # `hfstack trace`'s BM25 index of the data stage's documents: a folder of its own
MODELS = ("pretrain", "sft", "rl", "reward", "rlhf")  # the steps that save a model (config.json)
OPTIONAL_MODELS = ("dpo",)  # and those of the other tail
PREFERENCE_STEPS = ("rlhf", "dpo")  # the two ways to the final model: the one that saved its model last wins
FINAL_CANDIDATES = ("rlhf", "dpo", "rl", "sft", "pretrain")  # the newest that saved one is the run's final model
DATASETS = ("data", "rank")  # the steps whose outputs are datasets another run could train on
PARENTS = {"sft": "pretrain", "rl": "sft", "rlhf": "rl", "reward": "rl", "dpo": "rl"}  # model step → its start
TRAINED_ON = {"pretrain": ("data",), "reward": ("rank",), "rlhf": ("rank",), "dpo": ("rank",)}  # → dataset steps


def _folder_of(step: str) -> property:
    name = (FOLDERS | OPTIONAL_FOLDERS)[step]
    return property(lambda self: self.folder(step), doc=f"RUN/{name}: the {step} step's outputs")


@dataclass(frozen=True)
class RunLayout:
    """The folders of the run directory `root`; reads nothing but `final_model` and `models`."""

    root: Path

    crawl = _folder_of("crawl")
    data = _folder_of("data")
    tokenizer = _folder_of("tokenizer")
    base = _folder_of("pretrain")
    generate = _folder_of("generate")
    regurgitation = _folder_of("regurgitation")
    sft = _folder_of("sft")
    eval = _folder_of("eval")
    rl = _folder_of("rl")
    prefs = _folder_of("rank")
    rm = _folder_of("reward")
    rlhf = _folder_of("rlhf")
    dpo = _folder_of("dpo")
    final_eval = _folder_of("final-eval")
    honesty = _folder_of("honesty")
    report = _folder_of("report")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def folder(self, step: str) -> Path:
        """RUN/<folder> holding the outputs, fingerprint and done marker of `step` (a FOLDERS or
        OPTIONAL_FOLDERS key)."""
        folders = FOLDERS | OPTIONAL_FOLDERS
        if step not in folders:
            raise KeyError(f"no step '{step}' in a run (steps: {', '.join(folders)})")
        return self.root / folders[step]

    @property
    def launch(self) -> Path:
        return self.root / LAUNCH

    @property
    def trace(self) -> Path:
        return self.root / TRACE

    def old_marker(self, step: str) -> Path | None:
        """Where the previous layout's speedrun marked `step` done, when that was not the step's folder:
        RUN/pretrain, RUN/rank and RUN/reward held only that marker (the outputs are in base, prefs, rm).
        Read for runs made then; never written."""
        folder = self.root / step
        return None if folder == self.folder(step) else folder

    def final_step(self) -> str | None:
        """The step whose model is the run's final model: the newest that saved one (of rlhf and dpo, the one
        saved last, when a run has both); None before pretraining."""
        saved = [step for step in FINAL_CANDIDATES if (self.folder(step) / "config.json").is_file()]
        tails = [step for step in saved if step in PREFERENCE_STEPS]
        if tails:
            return max(tails, key=lambda step: (self.folder(step) / "config.json").stat().st_mtime_ns)
        return saved[0] if saved else None

    def final_model(self) -> Path | None:
        step = self.final_step()
        return None if step is None else self.folder(step)

    def models(self) -> list[str]:
        """The model steps (MODELS, then OPTIONAL_MODELS) whose folder holds a saved model."""
        return [step for step in MODELS + OPTIONAL_MODELS if (self.folder(step) / "config.json").is_file()]

    @staticmethod
    def parent(step: str) -> str | None:
        """The model step that `step`'s model started from (None for pretraining, which starts from scratch)."""
        return PARENTS.get(step)

    @staticmethod
    def trained_on(step: str) -> tuple[str, ...]:
        """The dataset steps (DATASETS) whose outputs `step`'s model was trained on."""
        return TRAINED_ON.get(step, ())


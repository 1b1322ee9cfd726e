"""Honesty across a run: what each stage did to what the model says about facts it was never taught.

    hfstack honesty --run RUN [--limit 25] [--max_new_tokens 64] [--tax_limit 100]

For every language model of the run (base, sft, rl, rlhf or dpo; the reward model is not asked), on the
held-out facts of the SFT run (`RUN/sft/eval_sets.jsonl`, split into facts the base model did not know and
those it knew), counts the answers that were right, refused, or hallucinated (answered wrong), once with
the search tool on (the SFT run's search index) and once with it off: hfstack/tasks/knowledge_boundary.py.
Every model gets the SFT model's facts and index, and its own chat template (the base's answers are
mostly wrong: that is the measurement).
Alongside, the alignment tax: every held-out task `hfstack eval` scores, for every model after SFT. The
run's own evaluations are reused (RUN/eval scored the SFT model, RUN/final-eval the final one); a model
neither scored (RL's) is scored here by the eval stage, into RUN/honesty/tax-<model>.json.
Writes RUN/honesty/boundary.json; `hfstack report` shows it as "What each stage did to honesty". The
speedrun runs it after final-eval. Tests: python -m pytest -q tests/stages/test_honesty.py
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, read_yaml
from hfstack.core.layout import RunLayout
from hfstack.core.model import load_model
from hfstack.core.rundir import claim_output, finish_output, is_done, read_json
from hfstack.stages import load
from hfstack.tasks import knowledge_boundary as boundaries
from hfstack.tools.search import index_of_model

POLICIES = ("pretrain", "sft", "rl", "rlhf", "dpo")  # the run's language models, in the order they were trained
EVAL_STEPS = ("eval", "final-eval")  # the speedrun's held-out evaluations, reused for the model each scored


@dataclass
class HonestyConfig:
    run: str = "runs/tiny"  # the run directory whose models are asked
    output_dir: str | None = None  # default: RUN/honesty
    models: list[str] = field(default_factory=list)  # model folders to ask (default: base, sft, rl, rlhf/dpo of RUN)
    eval_sets: str | None = None  # the held-out sets (default: RUN/sft/eval_sets.jsonl); the search index beside them
    limit: int | None = bounded(None, ge=1)  # facts per group, unknown and known to the base (None: all)
    max_new_tokens: int = bounded(64, ge=1)  # tokens per answer, tool calls and their outputs included
    alignment_tax: bool = True  # also every held-out task for every model after SFT
    tax_limit: int | None = bounded(None, ge=1)  # items per task for a model scored here (None: as RUN/eval did)
    overwrite: bool = False  # start over: this stage's earlier files in the output folder go
    progress: bool = True  # a progress bar over each model's answers

    def __post_init__(self):
        check_fields(self, "honesty")
        run = RunLayout(Path(self.run))
        if not run.root.is_dir():
            raise ConfigError(f"honesty: field 'run': no run directory at '{self.run}'")
        items = [self.models] if isinstance(self.models, str) else self.models  # "a,b" from Python as from the CLI
        self.models = [m.strip() for item in items for m in item.split(",") if m.strip()]
        if not self.models:
            self.models = [str(run.folder(step)) for step in run.models() if step in POLICIES]
        if not self.models:
            raise ConfigError(f"honesty: field 'models': {run.root} holds no model yet (base, sft, rl, rlhf, dpo)")
        for folder in self.models:
            if not (Path(folder) / "config.json").is_file():
                raise ConfigError(f"honesty: field 'models': '{folder}' is not a model folder (no config.json)")
        if self.eval_sets is None:
            self.eval_sets = str(run.sft / "eval_sets.jsonl")
        if not Path(self.eval_sets).is_file():
            raise ConfigError(f"honesty: field 'eval_sets': no held-out sets at '{self.eval_sets}'; `hfstack sft` "
                              "writes them")


def model_name(folder: str) -> str:
    """The run's name for a model: its folder's (base, sft, rl, rlhf, dpo)."""
    return Path(folder).name


def same_model(run: RunLayout, named, folder: str) -> bool:
    """Whether an evaluation's `model_name_or_path` names `folder`: the same path, or, in a run directory that
    was copied or moved since (its recorded paths are the old ones), the same step's folder of the run."""
    if not named:
        return False
    named, folder = Path(str(named)).expanduser(), Path(folder).expanduser()
    moved = named.name == folder.name and folder.resolve().parent == run.root.resolve()
    return named.resolve() == folder.resolve() or moved


def run_evaluation(run: RunLayout, folder: str) -> tuple[dict, str] | None:
    """The results and file of the run's finished evaluation (eval, final-eval) that scored `folder`, if any."""
    for step in EVAL_STEPS:
        where = run.folder(step)
        if not (where / "config.yaml").is_file() or not is_done(where):
            continue
        settings = read_yaml(where / "config.yaml")
        output = where / Path(settings.get("output") or "eval.json").name  # the step's own file, wherever RUN is now
        results = read_json(output)
        if results and same_model(run, settings.get("model_name_or_path"), folder):
            return results, str(output)
    return None


def alignment_tax(cfg: HonestyConfig, run: RunLayout, out: Path) -> dict:
    """Every held-out task for every model after SFT: the run's evaluations where they exist, else the eval
    stage's own scoring, with RUN/eval's settings (its max_new_tokens; its limit unless tax_limit is set)."""
    evaluator = load("eval")  # another stage: through the registry
    base = run.base.resolve()
    earlier = read_yaml(run.eval / "config.yaml") if (run.eval / "config.yaml").is_file() else {}
    results, sources = {}, {}
    for folder in cfg.models:
        if Path(folder).resolve() == base:  # the base answers no task the way an assistant does: no tax row
            continue
        name = model_name(folder)
        found = run_evaluation(run, folder)
        if found is None:
            output = out / f"tax-{name}.json"
            settings = {"limit": cfg.tax_limit or earlier.get("limit")}
            if earlier.get("max_new_tokens"):
                settings["max_new_tokens"] = earlier["max_new_tokens"]
            print(f"[honesty] scoring {name} on every held-out task (no evaluation of the run scored it)", flush=True)
            found = (evaluator.run(evaluator.Config(model_name_or_path=folder, eval_sets=cfg.eval_sets,
                                                    output=str(output), progress=cfg.progress, **settings)),
                     str(output))
        results[name], sources[name] = found[0], str(Path(found[1]).relative_to(run.root)
                                                     if Path(found[1]).is_relative_to(run.root) else found[1])
    return {"models": list(results), "rows": boundaries.tax_table(results), "sources": sources}


def honesty(cfg: HonestyConfig) -> Path:
    run = RunLayout(Path(cfg.run))
    out = claim_output("honesty", cfg, folder=cfg.output_dir or run.folder("honesty"))
    started = time.time()
    rows = boundaries.knowledge_rows(cfg.eval_sets, cfg.limit)
    index = index_of_model(Path(cfg.eval_sets).parent)
    groups = {"unknown": sum(not r.get("known") for r in rows), "known": sum(bool(r.get("known")) for r in rows)}
    models: dict[str, dict] = {}
    if not rows:
        print(f"[honesty] no held-out facts in {cfg.eval_sets} (the SFT run had no facts): no boundary to measure")
    for folder in cfg.models if rows else []:
        name = model_name(folder)
        model, tokenizer = load_model(folder)
        if tokenizer.chat_template is None:  # a foreign base without one: it cannot be asked as the others are
            models[name] = {"folder": folder, "skipped": "its tokenizer has no chat template"}
            continue
        measured = boundaries.boundary_of_model(model, tokenizer, rows, index, cfg.max_new_tokens,
                                                progress=name if cfg.progress else None)
        models[name] = {"folder": folder} | measured
    boundary = {"eval_sets": cfg.eval_sets, "search_index": str(Path(cfg.eval_sets).parent / "search_index")
                if index is not None else None, "items": groups, "max_new_tokens": cfg.max_new_tokens,
                "models": models}
    boundary["seconds_boundary"] = round(time.time() - started, 1)
    if cfg.alignment_tax:
        boundary["tax"] = alignment_tax(cfg, run, out)
    boundary["seconds"] = round(time.time() - started, 1)
    (out / boundaries.BOUNDARY_FILE).write_text(json.dumps(boundary, indent=2) + "\n")
    print_boundary(boundary)
    print(f"→ {out / boundaries.BOUNDARY_FILE} ({boundary['seconds']} s)")
    finish_output(out, "honesty")
    return out


def print_boundary(boundary: dict) -> None:
    verdicts = boundaries.VERDICTS
    print(f"{'model':<8} {'search':<7} {'facts':<8} {'items':>5} " + " ".join(f"{v:>12}" for v in verdicts)
          + f" {'searched':>9}")
    for name, measured in boundary["models"].items():
        if "skipped" in measured:
            print(f"{name:<8} skipped: {measured['skipped']}")
        for setting in boundaries.SETTINGS:
            for group, figures in measured.get(setting, {}).get("groups", {}).items():
                print(f"{name:<8} {setting.removeprefix('search_'):<7} {group:<8} {figures['items']:>5} "
                      + " ".join(f"{figures[v]:>12}" for v in verdicts) + f" {measured[setting]['search_calls']:>9}")


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = HonestyConfig
run = honesty

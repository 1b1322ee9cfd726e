"""RL stage: reinforcement learning on verifiable tasks with TRL's GRPOTrainer, from the SFT model.

    hfstack rl --config recipes/tiny/rl.yaml [--max_steps 200 ...]

For each prompt the policy writes a group of answers (sampled, with its Python tool running inside
the rollout), each answer is checked against the known result, and GRPO pushes up the answers that
beat their group's average. Nobody writes the ideal solution: the model finds what works for it.

- Tasks: the arithmetic and letter-counting generators (fresh training items; the held-out items
  never appear), plus user tasks: a jsonl/parquet/Hub `dataset` with a `prompt` column and the
  columns its `reward_funcs` (import paths, TRL's reward-function signature) read.
- Rewards: correctness (the right number in the final answer) and format (the turn ends properly,
  tool calls run without error, the answer is stated in the protocol's phrasing).
- Tools in rollouts: TRL's `rollout_func` runs hfstack's tool loop, with Python and, when the starting
  model has one (`MODEL/search_index`, from `hfstack sft`), the search tool over its index, so a policy
  can learn to look things up; tool output tokens are masked out of the loss (`env_mask`), so the model
  is trained only on what it wrote. The index goes on with the trained policy, for the next stage.
- Results: greedy pass@1 on the SFT run's held-out items before and after, in `eval.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfstack.core.checkpoint import save_tokenizer, set_turn_end
from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.launch import print0
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.rundir import carry_run_files, newest_checkpoint, start_output
from hfstack.core.textfiles import load_records, read_jsonl
from hfstack.core.training import TrainConfig, common_trainer_args, finish_training, trainer_config
from hfstack.dataprep.dataset_mixture import DatasetMixture, load_mixture
from hfstack.rlalgo.rewards import BUILTIN_TASKS, correctness_reward, format_reward, load_reward_func
from hfstack.rlalgo.rollouts import rollout_tools, tool_rollout
from hfstack.tasks.registry import TASKS


@renamed(model="model_name_or_path", dataset="dataset_name")
@dataclass
class RLConfig(TrainConfig):
    """Policy, tasks, rewards and GRPO settings."""

    model_name_or_path: str = model_folder("runs/tiny/sft")  # the policy to start from: the SFT model, or a Hub id
    output_dir: str = "runs/tiny/rl"  # the trained policy, eval.json and checkpoints/
    # --- tasks: training prompts per built-in generator, plus user tasks
    tasks: dict = field(default_factory=lambda: {"arithmetic": 400, "counting": 400})  # prompts per built-in task
    dataset_name: str | None = None  # jsonl/parquet file or Hub dataset with a `prompt` column
    dataset_split: str = "train"  # the split of dataset_name read
    # prompts from several datasets by weight (hfstack.dataprep.dataset_mixture): {datasets: [{id, weight}, ...]},
    # dataset_rows of them drawn (absent: until the first runs out); scored by reward_funcs like dataset_name
    dataset_mixture: DatasetMixture | None = None  # Hub ids and local files with a prompt (or messages) column
    dataset_rows: int | None = bounded(None, ge=1)  # prompts drawn from dataset_mixture
    reward_funcs: list[str] = field(default_factory=list)  # "module:function", TRL's reward signature
    max_operand: int = bounded(999, ge=1)  # arithmetic training operands up to this (a curriculum: start small)
    format_weight: float = bounded(0.2, ge=0, why="0 drops the format reward")  # correctness, user rewards weigh 1
    use_tools: bool = True  # run the Python tool inside rollouts
    seed: int = 1  # the SFT mixture used seed 0; fresh items here
    # --- GRPO
    max_steps: int = bounded(100, ge=1)  # GRPO optimizer steps
    learning_rate: float = bounded(2e-4, gt=0)  # peak learning rate
    num_generations: int = bounded(8, ge=2, why="GRPO compares answers within a group")  # answers per prompt (a group)
    prompts_per_step: int = bounded(4, ge=1)  # per device; the batch is prompts_per_step × num_generations answers
    max_completion_length: int = bounded(64, ge=1)  # tokens per answer, tool calls and their outputs included
    temperature: float = bounded(1.0, gt=0, why="the group's answers are sampled")  # sampling temperature
    beta: float = bounded(0.0, ge=0)  # KL penalty to the SFT policy (0: no reference model, as in DAPO/Dr. GRPO)
    loss_type: str = "dapo"  # TRL GRPOConfig's loss_type: dapo, grpo, dr_grpo, bnpo, ...
    eval_limit: int = bounded(200, ge=1)  # held-out items per task for pass@1
    save_steps: int = bounded(50, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint

    def __post_init__(self):
        check_fields(self, "rl")
        self.check_training("rl", "trl.GRPOConfig")
        bad = {k: v for k, v in self.tasks.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"rl: 'tasks' are training prompts per task, whole numbers >= 0; got {bad}")
        unknown = set(self.tasks) - set(BUILTIN_TASKS)
        if unknown:
            raise ConfigError(f"rl: unknown task(s) {sorted(unknown)} in 'tasks'; "
                              f"built-in: {', '.join(BUILTIN_TASKS)} (user tasks go in 'dataset_name' with "
                              "'reward_funcs')")
        if (self.dataset_name or self.dataset_mixture) and not self.reward_funcs:
            raise ConfigError("rl: 'dataset_name' and 'dataset_mixture' need 'reward_funcs' (import paths of "
                              "functions that score their answers)")


# ------------------------------------------------------------------------------------------ rewards


# ------------------------------------------------------------------------------------------ rollouts


# ------------------------------------------------------------------------------------------ data


def task_prompts(tasks: dict, seed: int, max_operand: int = 999) -> list[dict]:
    """Training prompts from the tasks' training splits, with the expected answer. Rows another task
    mixes in (counting's spelling rows) are left out: each task is trained on its own questions."""

    rows = []
    for name, count in tasks.items():
        if count <= 0:
            continue
        task = TASKS[name]
        made = task.generate(count, seed, max_operand=max_operand)["train"]
        rows += [{"prompt": task.prompt(r), "task": name, "answer": r["answer"]} for r in made if r["task"] == name]
    return rows


def user_prompts(cfg: RLConfig) -> list[dict]:
    """Prompts from dataset_name and dataset_mixture, as messages, with the columns reward_funcs read."""
    rows = []
    if cfg.dataset_name:
        rows = load_records(cfg.dataset_name, cfg.dataset_split, "rl dataset")
        if rows and "prompt" not in rows[0]:
            raise ConfigError(f"rl: dataset '{cfg.dataset_name}' has no 'prompt' column (columns: {sorted(rows[0])})")
    if cfg.dataset_mixture:
        drawn = load_mixture(cfg.dataset_mixture, "prompts", cfg.dataset_rows, "rl: dataset_mixture")
        print0(f"[rl] dataset_mixture: {drawn.report['rows']} prompts drawn")
        rows += drawn.train
    out = []
    for row in rows:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        out.append({**row, "prompt": prompt, "task": row.get("task") or "user", "answer": str(row.get("answer", ""))})
    return out


def held_out(model_dir: str, limit: int, seed: int) -> dict[str, list[dict]]:
    """The SFT run's held-out items (eval_sets.jsonl) of the tasks RL trains on, or those tasks' eval splits."""

    by_task: dict[str, list[dict]] = {t: [] for t in BUILTIN_TASKS}
    path = Path(model_dir) / "eval_sets.jsonl"
    rows = (row for _, row in read_jsonl(str(path), "eval sets")) if path.is_file() else (
        row for t in BUILTIN_TASKS for row in TASKS[t].generate(limit * 5, seed)["eval"])
    for row in rows:
        if row["task"] in by_task and len(by_task[row["task"]]) < limit:
            by_task[row["task"]].append(row)
    return by_task


def pass_at_1(model, tokenizer, sets: dict[str, list[dict]], max_new_tokens: int, tools: dict,
              progress: bool = False) -> dict:
    """Greedy answers with the rollouts' tools, scored exactly as `hfstack eval` scores them."""

    return {name: TASKS[name].accuracy(model, tokenizer, rows, max_new_tokens, tools,
                                       max_tool_calls=2 if tools else 0,
                                       progress=f"pass@1 {name}" if progress else None)[0]
            for name, rows in sets.items() if rows}


# ------------------------------------------------------------------------------------------ the stage


def run_rl(cfg: RLConfig, callbacks: list | None = None) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    folder = resolve_model(cfg.model_name_or_path, cfg.model_revision, "rl", "policy")
    out, main = start_output("rl", cfg)  # after the model is checked: a missing one writes nothing
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=cfg.load_dtype())
    rows = task_prompts(cfg.tasks, cfg.seed, cfg.max_operand) + user_prompts(cfg)
    if not rows:
        raise ConfigError("rl: no training prompts; set 'tasks', 'dataset_name' or 'dataset_mixture'")
    reward_funcs = [correctness_reward, format_reward] + [load_reward_func(p) for p in cfg.reward_funcs]
    sets = held_out(folder, cfg.eval_limit, cfg.seed)
    tools = rollout_tools(folder, cfg.use_tools)  # the starting model's search index, when it has one
    before = pass_at_1(model, tokenizer, sets, cfg.max_completion_length, tools, cfg.progress)
    print0(f"[rl] pass@1 before: {before}")
    batch = cfg.prompts_per_step * cfg.num_generations
    args = trainer_config(GRPOConfig, "rl", cfg.training_args, **common_trainer_args(cfg, out),
        per_device_train_batch_size=batch, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta,
        loss_type=cfg.loss_type, reward_weights=[1.0, cfg.format_weight] + [1.0] * len(cfg.reward_funcs),
        mask_truncated_completions=False)
    columns = {key: None for row in rows for key in row}  # every row has every column: from_list reads the first's
    rows = [columns | row for row in rows]
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=callbacks or [],
                          rollout_func=tool_rollout(cfg.max_completion_length, cfg.temperature, tools))
    trainer.train(resume_from_checkpoint=newest_checkpoint(out / "checkpoints"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    after = pass_at_1(model, tokenizer, sets, cfg.max_completion_length, tools, cfg.progress)
    print0(f"[rl] pass@1 after: {after}")
    if not main:
        return out
    set_turn_end(model, tokenizer)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    carry_run_files(Path(folder), out)
    history = [r for r in trainer.state.log_history if "reward" in r]
    curves = {name: [r[f"rewards/{name}/mean"] for r in history if f"rewards/{name}/mean" in r]
              for name in trainer.reward_func_names}
    report = {"pass@1_before": before, "pass@1_after": after, "held_out_items": {t: len(r) for t, r in sets.items()},
              "steps": trainer.state.global_step, "train_prompts": len(rows),
              "reward_first": history[0]["reward"] if history else None,
              "reward_last": history[-1]["reward"] if history else None,
              "seconds_per_step": round(trainer.state.log_history[-1].get("train_runtime", 0)
                                        / max(1, trainer.state.global_step), 3), "reward_curves": curves}
    finish_training(cfg, out, "rl", report, steps=trainer.state.global_step)
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RLConfig
run = run_rl

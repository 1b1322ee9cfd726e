"""hfstack's held-out sets as lm-evaluation-harness tasks, and the lm_eval runner behind
`hfstack eval --harness lm_eval` (EleutherAI's harness, `lm_eval` 0.4).

    hfstack eval --model_name_or_path RUN/sft --export_tasks DIR      # DIR/hfstack_<task>.yaml + .jsonl
    lm_eval --model hf --model_args pretrained=RUN/sft,add_bos_token=True --tasks hfstack \\
        --include_path DIR --apply_chat_template                     # stock lm_eval, hfstack's prompts
    hfstack eval --model_name_or_path RUN/sft --harness lm_eval --tasks hfstack --include_path DIR \\
        --apply_chat_template true                                   # the same, from hfstack

Each exported doc is one held-out row: `question` is the user turn lm_eval puts in the chat template
(a multi-turn row's earlier turns are folded into it, spelled in the template's own tokens, so the
rendered prompt is hfstack's to the token), `system` its system message (the task's `description`,
so a row without one gets the template's default). Generation stops where hfstack's tool-free
answers stop: at the end of the turn or at the start of a tool call (`eos_token_id` in the YAML,
the exporting tokenizer's ids; lm_eval decodes without special tokens, so stop strings alone cannot
cut there). Arithmetic and counting pre-fill the turn as `hfstack eval`'s "no tools" column does
(`gen_prefix`), and are scored by regex filters and `exact_match`; identity and knowledge by a
`utils.py` written beside the YAMLs from hfstack's own judges' source, so stock lm_eval needs no
hfstack. Search is not exported: its answers need the search tool, and lm_eval runs no tools.

Tested in tests/stages/test_eval_harness.py.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import yaml

from hfstack.core.errors import ConfigError
from hfstack.core.protocol import END_OF_TURN, TOOL_CALL_TOKENS
from hfstack.core.tokens import vocab_id
from hfstack.tasks.conversation import prompt_of
from hfstack.tasks.identity import _comparable
from hfstack.tasks.judges import _WORD, is_refusal, word_overlap_judge
from hfstack.tasks.registry import TASKS

KNOWLEDGE = "knowledge"  # held-out facts: scored by refusals and recall, not a registered task
WITH_PASSAGE = "knowledge_with_passage"  # the same facts with their source passage in the question
GROUP = "hfstack"  # the lm_eval group holding every exported task
NOT_EXPORTED = {"search": "its answers need the search tool, and lm_eval runs no tools"}
SENTINEL = "\x00hfstack-question\x00"  # stands for the user turn when the chat template is split around it
# the number an answer ends on (hfstack.tasks.base.stated_number, commas kept here and ignored by exact_match)
LAST_NUMBER = r"(?<![\w,-])-?\d[\d,]*(?!\w)"
SCORING = {  # task → (gen_prefix, regex filter: pattern and which match, or None for utils.py's scorer)
    "arithmetic": (TASKS["arithmetic"].no_tool_prefill, (LAST_NUMBER, -1)),
    "counting": (TASKS["counting"].no_tool_prefill, (r"has (\d+) '.'\.?\s*$", -1)),  # the spelled-out ending
    "spelling": (None, (r"(?<![A-Za-z-])[A-Za-z](?:-[A-Za-z])+(?![A-Za-z])", -1)),  # the last spelling
    "identity": (None, None),
    KNOWLEDGE: (None, None),
    WITH_PASSAGE: (None, None),
}

UTILS_HEADER = '''"""Scoring for hfstack's exported lm_eval tasks (written by `hfstack eval --export_tasks`).
Standalone: the judges below are copied from hfstack's source, so stock lm_eval needs no hfstack."""

import re

_WORD = re.compile({word!r})


'''
UTILS_SCORERS = '''

def identity(doc, results):
    """States every fact of the identity card that the question asks about, in any wording."""
    answer = _comparable(results[0])
    if doc.get("facts"):
        return {"accuracy": float(all(_comparable(fact) in answer for fact in doc["facts"]))}
    return {"accuracy": float(answer == _comparable(doc["answer"]))}  # older sets: the exact answer


def knowledge(doc, results):
    """Recall (word overlap with the reference) on every fact; refusals where the base model did not know it."""
    right, refused = word_overlap_judge(results[0], doc["answer"]), is_refusal(results[0])
    return {"accuracy": float(right), "accuracy_on_known": float(right) if doc["known"] else None,
            "refusal_rate_on_unknown": None if doc["known"] else float(refused)}


def mean_of_present(items):
    """The mean over the docs a metric applies to (None elsewhere)."""
    present = [item for item in items if item is not None]
    return sum(present) / len(present) if present else None
'''


class Function(str):
    """A `!function utils.name` reference in a task YAML."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def stop_ids(folder: str, tokenizer) -> list[int]:
    """Where a tool-free answer ends: the end of the turn (hfstack's, the tokenizer's eos, the generation
    config's), or the start of a tool call."""
    from transformers import GenerationConfig

    ids = {vocab_id(tokenizer, END_OF_TURN), tokenizer.eos_token_id}
    ids |= {vocab_id(tokenizer, start) for start, _ in TOOL_CALL_TOKENS.values()}
    try:
        configured = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return sorted(i for i in ids if isinstance(i, int))


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def question_text(tokenizer, prompt: list[dict]) -> tuple[str, bool]:
    """The user turn that, put alone in the chat template after the row's system message, renders
    exactly `prompt`: the last question, with any earlier turns folded in front of it in the template's
    own tokens. (text, folded); when the template cannot be split that way, just the last question."""
    system = [m for m in prompt if m["role"] == "system"]
    last = prompt[-1]["content"]
    if len(prompt) == len(system) + 1:
        return last, False
    full = render(tokenizer, prompt)
    head, _, tail = render(tokenizer, [*system, {"role": "user", "content": SENTINEL}]).partition(SENTINEL)
    if full.startswith(head) and full.endswith(tail) and len(full) >= len(head) + len(tail):
        return full[len(head):len(full) - len(tail)], True
    return last, False


def harness_docs(name: str, rows: list[dict], tokenizer) -> tuple[list[dict], int]:
    """The rows as lm_eval docs, and how many lost their earlier turns (a template that could not fold them)."""
    docs, dropped = [], 0
    for row in rows:
        prompt = prompt_of(row)
        question, folded = question_text(tokenizer, prompt)
        earlier = len(prompt) > 1 + (prompt[0]["role"] == "system")
        dropped += earlier and not folded
        system = next((m["content"] for m in prompt if m["role"] == "system"), "")
        doc = {"question": question, "system": system, "answer": str(row.get("answer", ""))}
        if name == "identity":
            doc |= {"facts": row.get("facts") or [], "answer": row.get("answer") or row["messages"][-1]["content"]}
        elif name == KNOWLEDGE:
            doc["known"] = bool(row["known"])
        elif name == WITH_PASSAGE:  # as `hfstack eval` asks it: the passage, then the question, no system message
            doc |= {"question": f"{row['passage']}\n\n{prompt[-1]['content']}", "system": "",
                    "known": bool(row["known"])}
        docs.append(doc)
    return docs, dropped


def task_config(name: str, data_file: Path, until: list[str], eos_ids: list[int], max_new_tokens: int,
                folder: str) -> dict:
    prefix, regex = SCORING[name]
    config = {"task": f"{GROUP}_{name}", "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}}, "test_split": "test",
              "output_type": "generate_until", "description": "{{system}}", "doc_to_text": "{{question}}",
              "doc_to_target": "{{answer}}", "target_delimiter": "",
              "generation_kwargs": {"until": until, "do_sample": False, "max_gen_toks": max_new_tokens,
                                    "eos_token_id": eos_ids}}
    if prefix:
        config["gen_prefix"] = prefix
    if regex:
        pattern, group = regex
        config["filter_list"] = [{"name": "hfstack", "filter": [
            {"function": "regex", "regex_pattern": pattern, "group_select": group}, {"function": "take_first"}]}]
        config["metric_list"] = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                  "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": [","]}]
    elif name == "identity":
        config["process_results"] = Function("utils.identity")
        config["metric_list"] = [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}]
    else:
        config["process_results"] = Function("utils.knowledge")
        config["metric_list"] = [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}] + [
            {"metric": m, "aggregation": Function("utils.mean_of_present"), "higher_is_better": better}
            for m, better in (("accuracy_on_known", True), ("refusal_rate_on_unknown", False))]
    config["metadata"] = {"version": 1.0, "hfstack_model": folder}
    return config


def write_yaml(path: Path, config: dict, comment: str) -> None:
    text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    path.write_text("".join(f"# {line}\n" for line in comment.splitlines()) + text)


def write_utils(directory: Path) -> None:
    """utils.py beside the YAMLs: identity's and knowledge's scorers, built on hfstack's judges' source."""
    sources = "\n\n".join(inspect.getsource(f) for f in (_comparable, word_overlap_judge, is_refusal))
    (Path(directory) / "utils.py").write_text(UTILS_HEADER.format(word=_WORD.pattern) + sources + UTILS_SCORERS)


def export_tasks(folder: str, sets: dict[str, list[dict]], directory: str, max_new_tokens: int) -> dict:
    """Write `sets` (task → held-out rows) into `directory` as lm_eval tasks and the `hfstack` group."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ConfigError(f"eval: '{folder}' has no chat template; --export_tasks exports an assistant's held-out "
                          "sets, which are asked through it")
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"eval: --export_tasks '{directory}' is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    eos_ids = stop_ids(folder, tokenizer)
    until = [tokenizer.convert_ids_to_tokens(i) for i in eos_ids]
    bos = tokenizer.bos_token is not None
    written, skipped, dropped, longest = {}, {}, 0, 0
    exported = {**sets, **({WITH_PASSAGE: sets[KNOWLEDGE]} if KNOWLEDGE in sets else {})}
    for name, rows in exported.items():
        if name not in SCORING:
            skipped[name] = NOT_EXPORTED.get(name, "no lm_eval scoring for it")
            continue
        docs, lost = harness_docs(name, rows, tokenizer)
        dropped += lost
        data = out / f"{GROUP}_{name}.jsonl"
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        config = task_config(name, data, until, eos_ids, max_new_tokens, folder)
        write_yaml(out / f"{GROUP}_{name}.yaml", config,
                   f"hfstack's held-out {name} set of {folder}, {len(docs)} items, as an lm_eval task.\n"
                   "Written by `hfstack eval --export_tasks`; the data path is absolute: export again after a move.")
        written[config["task"]] = len(docs)
        for d in docs:
            system = [{"role": "system", "content": d["system"]}] if d["system"] else []
            text = render(tokenizer, [*system, {"role": "user", "content": d["question"]}]) + (SCORING[name][0] or "")
            longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    if not written:
        raise ConfigError(f"eval: nothing to export: the held-out sets hold only {', '.join(sets) or 'no rows'}")
    if {"identity", KNOWLEDGE} & set(exported):
        write_utils(out)
    write_yaml(out / f"{GROUP}.yaml", {"group": GROUP, "task": list(written)},
               f"hfstack's held-out sets of {folder} (hfstack eval --export_tasks)")
    window = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None)
    needed = longest + max_new_tokens
    args = f"pretrained={folder}" + (",add_bos_token=True" if bos else "") + (
        f",max_length={needed}" if window and window < needed else "")
    command = (f"lm_eval --model hf --model_args {args} --tasks {GROUP} --include_path {out} "
               "--apply_chat_template --batch_size 16")
    (out / "README.md").write_text(f"# hfstack's held-out sets as lm_eval tasks\n\nFrom `{folder}`: "
                                   + ", ".join(f"{t} ({n} items)" for t, n in written.items()) + ".\n\n"
                                   f"```bash\n{command}\n```\n")
    return {"directory": str(out), "tasks": written, "skipped": skipped, "earlier_turns_dropped": dropped,
            "command": command}


def model_args(folder: str, batch_size: int, max_length: int | None) -> dict:
    """lm_eval's `hf` model arguments for an hfstack checkpoint (or any local folder): the bos token
    prepended when the tokenizer has one (hfstack pretrains every document after `<|endoftext|>`, and
    its tokenizer adds nothing by itself), float32 on a CPU, bfloat16 on a GPU that has it."""
    import torch
    from transformers import AutoTokenizer

    gpu = torch.cuda.is_available()
    args = {"pretrained": folder, "dtype": "bfloat16" if gpu and torch.cuda.is_bf16_supported() else "float32",
            "device": "cuda" if gpu else "cpu", "batch_size": batch_size}
    if AutoTokenizer.from_pretrained(folder).bos_token is not None:
        args["add_bos_token"] = True
    if max_length:
        args["max_length"] = max_length
    return args


def task_manager(tasks: list[str], include_path: str | None):
    """lm_eval's TaskManager that knows every name in `tasks` (the include path alone when it has them
    all, which skips indexing the built-in tasks); one-line ConfigError for a name it does not know."""
    from lm_eval.tasks import TaskManager

    if include_path and not Path(include_path).expanduser().is_dir():
        raise ConfigError(f"eval: include_path '{include_path}' is not a folder of lm_eval task YAMLs")
    path = str(Path(include_path).expanduser()) if include_path else None
    if path:
        local = TaskManager(include_path=path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    manager = TaskManager(include_path=path)
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing:
        where = f" or in '{include_path}'" if include_path else ""
        raise ConfigError(f"eval: no lm_eval task named {', '.join(repr(t) for t in missing)} among lm_eval's "
                          f"{len(manager.all_tasks)} tasks{where}; list them with `lm_eval ls tasks`, and give a "
                          "folder of your own task YAMLs with --include_path DIR")
    return manager


def chance_level(samples: list[dict]) -> float:
    """A multiple-choice task's accuracy by guessing: the mean of 1/k over its items (k choices each)."""
    counts = [sum(1 for args in s["arguments"] if args[0]) or len(s["arguments"]) for s in samples]
    return sum(1 / k for k in counts) / len(counts)


def task_entry(metrics: dict, config: dict, samples: list[dict], counts: dict, shots) -> dict:
    """One task's metrics as lm_eval names them ("exact_match,hfstack", "acc_stderr,none"), its item count,
    chance-corrected accuracies for multiple choice, and its first answers."""
    entry = {"items": counts.get("effective", len(samples)), "num_fewshot": shots,
             "output_type": config.get("output_type")}
    entry |= {k: v for k, v in metrics.items() if k not in ("alias", "name", "sample_len")}
    if config.get("output_type") == "multiple_choice" and samples:
        chance = chance_level(samples)
        entry["chance"] = round(chance, 4)
        for key in [k for k in metrics if k.split(",")[0] in ("acc", "acc_norm")]:
            metric, _, filter_name = key.partition(",")
            corrected = (metrics[key] - chance) / (1 - chance)
            entry[f"{metric}_chance_corrected,{filter_name}"] = round(corrected, 4)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            if isinstance(stderr, float):
                entry[f"{metric}_chance_corrected_stderr,{filter_name}"] = round(stderr / (1 - chance), 4)
    if config.get("output_type") == "generate_until":
        entry["examples"] = [{"target": s["target"], "answer": s["resps"][0][0], "extracted": s["filtered_resps"][0]}
                             for s in samples[:3]]
    return entry


def run_lm_eval(folder: str, tasks: list[str], include_path: str | None = None, apply_chat_template: bool = False,
                num_fewshot: int | None = None, limit: int | None = None, batch_size: int = 16,
                max_length: int | None = None, system_instruction: str | None = None) -> tuple[dict, dict]:
    """lm_eval's `simple_evaluate` on the model folder: (hfstack's summary for the output json, lm_eval's
    own results with the samples)."""
    import lm_eval

    manager = task_manager(tasks, include_path)
    args = model_args(folder, batch_size, max_length)
    results = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      apply_chat_template=apply_chat_template, system_instruction=system_instruction,
                                      task_manager=manager, log_samples=True)
    entries = {name: task_entry(metrics, results["configs"].get(name, {}), results["samples"].get(name, []),
                                results["n-samples"].get(name, {}), results.get("n-shot", {}).get(name))
               for name, metrics in results["results"].items() if not results.get("group_subtasks", {}).get(name)}
    summary = {"lm_eval_version": lm_eval.__version__, "model_args": args, "tasks": tasks,
               "include_path": include_path, "apply_chat_template": apply_chat_template, "num_fewshot": num_fewshot,
               "limit": limit, "results": entries,
               "groups": {name: {"tasks": tasks} | {k: v for k, v in results.get("groups", {}).get(name, {}).items()
                                                     if k != "alias"}
                          for name, tasks in results.get("group_subtasks", {}).items() if tasks}}
    return summary, results


def print_summary(summary: dict) -> None:
    print(f"{'lm_eval task':<28} {'items':>6}  metric")
    for name, entry in summary["results"].items():
        values = [f"{key} {value:.4f}" + (f" ± {entry[stderr]:.4f}" if isinstance(entry.get(stderr := key.replace(
                  ",", "_stderr,", 1)), float) else "") for key, value in entry.items()
                  if "," in key and "_stderr," not in key and isinstance(value, float)]
        print(f"{name:<28} {entry['items']:>6}  {'; '.join(values) or '-'}")

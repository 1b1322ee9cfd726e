"""The run's report card: what every stage did, in Markdown and HTML with PNG plots.

    hfstack report --run runs/tiny          # the speedrun writes it as its last stage

Reads what the stages left in the run directory and writes `RUN/report/report.md`, `report.html`
and the plots: the data funnel; tokenizer compression against GPT-4's cl100k and a coloured token
sample; pretraining loss and bits-per-byte; sample generations; the SFT, RL and RLHF evaluations
before and after; the RM score against the KL during RLHF; DPO's held-out margins before and after and
its watch (when the run took that tail; both tails when both ran); time per stage; the compute plan for the
run (`hfstack plan`'s arithmetic from each training stage's recorded config) against what it measured;
versions and hardware.
The Markdown, with model-card metadata on top, also becomes the final model's `README.md`.
A stage that did not run is left out. Where each stage's outputs are: hfstack.core.layout.RunLayout.
Tests: python -m pytest -q tests/stages/test_report.py
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.cards import eval_reports, model_card
from hfstack.core.config import ConfigError, check_fields
from hfstack.core.layout import RunLayout
from hfstack.core.rundir import claim_output, finish_output, step_seconds
from hfstack.rlalgo.attacks import attacks_section
from hfstack.rlalgo.overopt import curve_section
from hfstack.stages import load
from hfstack.tasks.knowledge_boundary import honesty_section
from hfstack.tools.provenance import sources_section
from hfstack.ui.card import Report, number, read_json, read_jsonl_rows
from hfstack.ui.tokens import render_html, shown, tokens_of_text


@dataclass
class ReportConfig:
    run: str = "runs/tiny"  # the run directory to report on
    output_dir: str | None = None  # default: RUN/report

    def __post_init__(self):
        check_fields(self, "report")
        if not Path(self.run).is_dir():
            raise ConfigError(f"report: no run directory at '{self.run}'")


# ----------------------------------------------------------------------------- sections


def data_section(report: Report, run: RunLayout):
    stats = read_json(run.data / "stats.json")
    if not stats:
        return
    report.heading("Data: the funnel")
    steps = stats["steps"]
    report.table(["step", "docs in", "docs out", "dropped"],
                 [[s["step"], s["docs_in"] if s["docs_in"] is not None else "-", s["docs_out"],
                   ", ".join(f"{k}={v}" for k, v in s["dropped"].items())] for s in steps])
    report.plot("funnel", lambda ax: (ax.barh([s["step"] for s in steps][::-1], [s["docs_out"] for s in steps][::-1]),
                                      ax.set_xlabel("documents")))


def tokenizer_section(report: Report, run: RunLayout):
    stats = read_json(run.tokenizer / "eval.json")
    if not stats:
        return
    report.heading("Tokenizer")
    report.table(["vocab", "bytes/token (held out)", "cl100k bytes/token", "ratio to cl100k"],
                 [[stats.get("vocab_size", "-"), stats.get("bytes_per_token", "- (no held-out documents)"),
                   stats.get("cl100k_bytes_per_token", "-"), stats.get("ratio_to_cl100k", "-")]])

    sample = "The assistant counts 3 r's in strawberry: s-t-r-a-w-b-e-r-r-y."
    tokens = tokens_of_text(str(run.tokenizer), sample)
    page = render_html(tokens, "", "", False)
    report.code("|".join(shown(t) for t in tokens), page[page.index("<div class=tokens>"):])


def pretrain_section(report: Report, run: RunLayout):
    log = read_jsonl_rows(run.base / "log.jsonl")
    summary = read_json(run.base / "summary.json")
    if not log or not summary:
        return
    report.heading("Pretraining")
    report.table(["parameters", "steps", "tokens seen", "seconds", "validation loss", "bits per byte"],
                 [[f"{summary['parameters']:,}", summary["steps"], f"{summary['tokens_seen']:,}", summary["seconds"],
                   round(summary.get("eval_loss") or float("nan"), 3),
                   round(summary.get("eval_bpb") or float("nan"), 3)]])
    train = [r for r in log if "loss" in r]
    evals = [r for r in log if "eval_loss" in r]

    def draw(ax):
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss")
        ax.plot([r["step"] for r in evals], [r["eval_bpb"] for r in evals], "s--", label="validation bits/byte")
        ax.set_xlabel("step")
        ax.legend()

    report.plot("pretraining", draw)
    recital = read_json(run.regurgitation / "report.json")
    if recital:
        report.heading("Recitation and working memory")
        report.text(f"After the first {recital['prefix_tokens']} tokens of a document, greedy tokens that match its "
                    f"next {recital['continuation_tokens']} verbatim (mean, before the first difference): training "
                    "documents (recitation) against held-out ones, and held-out ones shown once in full just "
                    "before (copying from the context, which tool calls need).")
        sides = [("training documents", "train"), ("held-out documents", "heldout"),
                 ("held-out, passage in context", "heldout_in_context")]
        report.table(["documents", "count", "mean matched tokens", "exact continuations"],
                     [[label, recital[key]["docs"], recital[key]["mean_matched_tokens"],
                       recital[key]["exact_continuations"]] for label, key in sides if key in recital])
        if induction := recital.get("induction"):
            report.text(f"Random tokens shown twice ({induction['sequences']} × {induction['tokens']}): "
                        f"{induction['repeat_accuracy']:.0%} of the second copy predicted, against "
                        f"{induction['first_copy_accuracy']:.0%} of the first (induction).")
    samples = read_json(run.generate / "samples.json") or []
    if samples:
        report.heading("Samples from the base model")
        report.code("\n\n".join(f"{s.get('prompt', s.get('as_assistant'))!r} → {s.get('sample', s.get('answer'))}"
                                for s in samples))


def evals_section(report: Report, run: RunLayout):
    sft = read_json(run.eval / "eval.json")
    rl = read_json(run.rl / "eval.json")
    if sft:
        report.heading("Assistant (SFT), held-out sets")
        rows = []
        for task, entry in sft.items():
            if task == "harness" or not isinstance(entry, dict):  # lm_eval's results: the card's model-index
                continue
            if task == "knowledge":
                rows.append([task, f"refuses {entry['refusal_rate_on_unknown']} of unknown facts", "-", "-"])
            else:
                rows.append([task, entry["accuracy"], entry.get("accuracy_without_tools", "-"),
                             entry.get("one_answer_baseline", "-")])
        report.table(["task", "accuracy", "without tools", "one-answer baseline"], rows)
        if later := (sft.get("multiturn") or {}).get("later_turns"):
            pairs = [f"{t} {number(v['accuracy'])} vs {number(v['single_turn_accuracy'])}" for t, v in later.items()]
            report.text("Later turns of the multi-turn set against the same task asked alone: " + "; ".join(pairs))
    if rl:
        report.heading("RL on verifiable tasks (GRPO): pass@1 before and after")
        report.table(["task", "SFT", "after RL"], [[t, rl["pass@1_before"][t], rl["pass@1_after"].get(t, "-")]
                                                   for t in rl["pass@1_before"]])
        report.text(f"{rl['steps']} steps, {rl['seconds_per_step']} s/step; reward {number(rl['reward_first'])} → "
                    f"{number(rl['reward_last'])}.")
    final = read_json(run.final_eval / "eval.json")
    if sft and final:
        report.heading("The final model against the SFT model, same held-out sets")
        rows = []
        for task in sft:
            if task not in final:
                continue
            key = "refusal_rate_on_unknown" if task == "knowledge" else "accuracy"
            rows.append([task + (" (refusals on unknown facts)" if task == "knowledge" else ""),
                         sft[task][key], final[task][key]])
        tail = "DPO" if run.final_step() == "dpo" else "RLHF"
        report.table(["task", "SFT", f"final (after RL and {tail})"], rows)
    rm = read_json(run.rm / "eval.json")
    if rm:
        report.heading("Reward model")
        report.text(f"Held-out pairwise accuracy {number(rm['held_out_accuracy_before'])} before training, "
                    f"{number(rm['held_out_accuracy_after'])} after ({rm['train_pairs']} training pairs, "
                    f"{rm['test_pairs']} held out).")
    watch = read_jsonl_rows(run.rlhf / "watch.jsonl")
    if watch:
        rlhf = read_json(run.rlhf / "eval.json") or {}
        report.heading(f"RLHF ({rlhf.get('algo', '?')}, KL penalty {rlhf.get('beta', '?')})")
        report.table(["step", "RM score", "KL", "judge", "distinct-2", "length", "alarm"],
                     [[r["step"], round(r["rm_score"], 3), round(r["kl"], 4) if "kl" in r else "-",
                       round(r["judge"], 3), round(r["distinct2"], 3), round(r["length"], 1), r.get("alarm") or ""]
                      for r in watch])

        def draw(ax):  # one point per log, coloured by step: where the RM score went as the policy drifted
            kl, steps = [r.get("kl", 0.0) for r in watch], [r["step"] for r in watch]
            points = ax.scatter(kl, [r["rm_score"] for r in watch], c=steps, marker="o", label="RM score")
            ax.scatter(kl, [r["judge"] for r in watch], c=steps, marker="s", label="held-out judge")
            ax.figure.colorbar(points, ax=ax, label="step")
            ax.set_xlabel("KL to the reference policy (per token)")
            ax.legend()

        report.plot("rm_vs_kl", draw)
    dpo_section(report, run)


# what `hfstack dpo` measures on the held-out pairs (TRL's names), as the report labels them
DPO_FIGURES = [("reward margin", "rewards/margins"), ("reward accuracy", "rewards/accuracies"),
               ("log-prob of chosen", "logps/chosen"), ("log-prob of rejected", "logps/rejected"),
               ("log-prob margin", "logps/margins")]


def dpo_section(report: Report, run: RunLayout):
    dpo = read_json(run.dpo / "eval.json")
    if not dpo:
        return
    report.heading(f"Preferences without a reward model ({dpo.get('algo', 'dpo').upper()}, beta {dpo.get('beta')})")
    held = dpo.get("held_out") or {}
    if held.get("before") and held.get("after"):
        report.table(["held-out pairs", "before", "after"], [[label, number(held["before"].get(key)),
                                                             number(held["after"].get(key))]
                                                            for label, key in DPO_FIGURES])
    report.text(f"{dpo['steps']} steps on {dpo['train_pairs']} training pairs, {dpo['test_pairs']} held out. The "
                "reward is implicit: beta times how much more the policy than the starting one favours an answer.")
    watch = read_jsonl_rows(run.dpo / "watch.jsonl")
    if watch:
        report.table(["step", "margin", "log-prob chosen", "log-prob rejected", "judge", "distinct-2", "length",
                      "alarm"],
                     [[r["step"], number(r.get("margin")), number(r.get("logp_chosen")),
                       number(r.get("logp_rejected")), round(r["judge"], 3), round(r["distinct2"], 3),
                       round(r["length"], 1), r.get("alarm") or ""] for r in watch])


def timing_section(report: Report, run: RunLayout):
    rows = [[stage, took] for stage, took in step_seconds(run.root).items()]
    if rows:
        report.heading("Time per stage")
        report.table(["stage", "seconds"], rows)
        log = read_jsonl_rows(run.base / "log.jsonl")
        speeds = [r["tokens_per_s"] for r in log if "tokens_per_s" in r]
        if speeds:
            report.text(f"Pretraining throughput: {sum(speeds) / len(speeds):,.0f} tokens/s on average.")


def plan_section(report: Report, run: RunLayout):
    """`hfstack plan`'s arithmetic for this run, from each training stage's recorded config, beside its figures."""
    planner = load("plan")  # another stage: through the registry

    plan = planner.plan_run(run.root, step_seconds(run.root))
    if not plan["stages"]:  # no training stage ran
        return
    report.heading("Compute plan against the run")
    if all("missing" in r for r in plan["stages"]):
        report.text("No compute plan: " + "; ".join(f"{r['stage']}: {r['missing']}" for r in plan["stages"]) + ".")
        return
    report.text(f"`hfstack plan`'s arithmetic from each stage's recorded config, on its devices ({plan['gpu'].upper()}"
                f", peak {plan['peak_flops']:.3g} FLOP/s, {plan['mfu']:.0%} MFU); planned time: training FLOPs only.")
    rows, notes = [], []
    for r in plan["stages"]:
        got = r["measured"]
        took = f"{planner.human_time(got['seconds'])} ({got['timed']})" if "seconds" in got else "-"
        trained = f"{got['tokens']:,}" if got["tokens"] is not None else "-"
        mfu = f"{got['mfu']:.1%}" if "mfu" in got else "-"
        if "missing" in r:  # what it measured, and why there is no plan
            rows.append([r["stage"], got["devices"], got["parameters"] or "-", "-", trained, "-", "-", "-", "-", took,
                         "-", mfu])
            notes.append(f"{r['stage']}: not planned ({r['missing']})")
            continue
        total = r["parameters"] + r["embedding_parameters"]
        counted = f" (counted {got['parameters']:,})" if got["parameters"] not in (None, total) else ""
        ratio = r.get("tokens_per_parameter")
        ratio = f"{ratio:.2g} (Chinchilla ~{planner.CHINCHILLA})" if ratio is not None else "-"
        versus = f"{got['seconds'] / r['seconds']:.3g}×" if "seconds" in got and r["seconds"] > 0 else "-"
        memory = planner.human_bytes(r["memory_per_device"]["replicated"])
        rows.append([r["stage"], got["devices"], f"{total:,}{counted}", f"{r['tokens']:,}", trained, ratio, memory,
                     r["fits"], planner.human_time(r["seconds"]), took, versus, mfu])
        notes.append(f"{r['stage']}: {r['note']}")
    report.table(["stage", "devices", "parameters", "tokens planned", "tokens trained", "tokens/parameter",
                  "memory/device", "fits", "time planned", "time measured", "measured ÷ planned", "MFU measured"],
                 rows)
    report.text("Planned tokens: " + "; ".join(notes) + ".")


def environment_section(report: Report):
    import importlib.metadata as metadata
    import os

    import torch

    versions = []
    for package in ("hfstack", "torch", "transformers", "trl", "datasets", "tokenizers", "accelerate", "datatrove"):
        try:
            versions.append([package, metadata.version(package)])
        except metadata.PackageNotFoundError:
            continue
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    report.heading("Environment")
    report.text(f"Python {platform.python_version()} on {platform.platform()}; {device}.")
    report.table(["package", "version"], versions)


def report(cfg: ReportConfig) -> Path:
    run = RunLayout(Path(cfg.run).expanduser())
    # always drawn afresh: report's own earlier files go, others stay; another stage's folder is refused
    out = claim_output("report", cfg, overwrite=True, folder=cfg.output_dir or run.report)
    card = Report(out)
    for section in (data_section, tokenizer_section, pretrain_section, evals_section,
                    attacks_section, curve_section,  # the RM's red-team; RLHF's and DPO's over-optimisation curves
                    honesty_section,  # right, refused, hallucinated per model; the alignment tax (hfstack honesty)
                    timing_section,
                    sources_section,  # where the base's recitations come from (hfstack.tools.provenance)
                    plan_section):
        section(card, run)
    environment_section(card)
    title = f"hfstack run {run.root.name}"
    (out / "report.md").write_text(f"# {title}\n\n" + card.markdown())
    (out / "report.html").write_text(card.html(title))
    final = run.final_model()
    if final is not None:
        import shutil

        step = run.final_step()  # the card's metadata: hfstack.core.cards (a push adds license and lineage)
        (final / "README.md").write_text(model_card(final, f"# {title}\n\n" + card.markdown(), run.root.name,
                                                    license=None, stage=step, reports=eval_reports(final, run, step)))
        for image in out.glob("*.png"):
            shutil.copy(image, final / image.name)
    print(f"[report] {out / 'report.md'} and report.html"
          + (f"; model card in {final / 'README.md'}" if final else ""))
    finish_output(out, "report")
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = ReportConfig
run = report

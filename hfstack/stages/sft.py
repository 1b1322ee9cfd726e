"""SFT stage: turn the base model into an assistant by training on conversations (TRL SFTTrainer).

    hfstack sft --config recipes/tiny/sft.yaml [--max_steps 300 ...]

The mixture (hfstack.dataprep.mixture, from hfstack.tasks) holds identity conversations from an
identity card, arithmetic with Python tool calls, letter counting and spelling, and any chat
datasets given. The loss covers
only the assistant's tokens, tool calls included, through the chat template's generation markers;
tool outputs and user turns are context. The identity card's system message is built into the saved
chat template as the default. `peft:` in the recipe trains LoRA adapters instead of all weights
(`quantize_4bit: true` for QLoRA on a GPU); the adapters are merged into the saved model.
`first_phase:` trains on part of the mixture alone before the whole of it (a curriculum): the tiny
model learns to copy numbers from the question only when arithmetic is all it sees (and from many
distinct conversations, not a few repeated), then keeps the skill while arithmetic stays a large
part of the mixture. `freeze:` holds named parameters fixed after the first phase (the tiny recipe
fixes the embeddings: what the first phase learned then holds through the mixture on every seed
tried, and identity drops: docs/LOG.md).

Writes `output_dir/` as a plain transformers model with its chat template, and `eval_sets.jsonl`,
the held-out conversations `hfstack eval` scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from hfstack.core.adopt import adopt_protocol, over_length, training_rows, turn_end_token
from hfstack.core.checkpoint import save_tokenizer, set_turn_end
from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.launch import print0, wait_for_all_ranks
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed
from hfstack.core.rundir import newest_checkpoint, start_output
from hfstack.core.tokens import read_texts
from hfstack.core.training import (
    TrainConfig,
    common_trainer_args,
    finish_training,
    save_trained_model,
    sharding_report,
    trainer_config,
)
from hfstack.dataprep import knowledge
from hfstack.dataprep.dataset_mixture import DatasetMixture, load_mixture
from hfstack.dataprep.mixture import GENERATED_SOURCES, build_mixture
from hfstack.tasks.identity import IdentityCard
from hfstack.tasks.registry import TASKS
from hfstack.tools.loop import context_window
from hfstack.tools.search import SearchIndex

# Mixture sources: the generated ones need only the identity card, so a first phase can use them;
# knowledge and search need the corpus and the base model's interrogation; chat is the number of rows
# drawn from dataset_mixture (absent: until its first dataset runs out).
SOURCES = GENERATED_SOURCES + ("knowledge", "search", "chat")


@renamed(micro_batch_size="per_device_train_batch_size")
@dataclass
class FirstPhase:
    """A first phase on part of the mixture, trained alone before the whole of it (a curriculum): a
    skill the mixture buries (copying numbers) is learned first. Unset options are the stage's."""

    counts: dict = field(default_factory=dict)  # conversations per generated source, e.g. {arithmetic: 2400}
    max_steps: int | None = bounded(None, ge=1)  # required
    per_device_train_batch_size: int | None = bounded(None, ge=1)  # None: the stage's
    learning_rate: float | None = bounded(None, gt=0)  # None: the stage's
    warmup_steps: int | None = bounded(None, ge=0)  # None: the stage's

    def __post_init__(self):
        check_fields(self, "sft: first_phase")
        if not self.counts or self.max_steps is None:
            raise ConfigError("sft: 'first_phase' needs 'counts' (a mixture) and 'max_steps', "
                              "e.g. {counts: {arithmetic: 2400}, max_steps: 800}")
        unknown = set(self.counts) - set(GENERATED_SOURCES)
        if unknown:
            raise ConfigError(f"sft: 'first_phase.counts' takes {', '.join(GENERATED_SOURCES)}; "
                              f"got {sorted(unknown)}")

    def overrides(self) -> dict:
        """The training options this phase sets (the rest are the stage's)."""
        return {k: v for k, v in asdict(self).items() if k != "counts" and v is not None}


@renamed(model="model_name_or_path", micro_batch_size="per_device_train_batch_size")
@dataclass
class SFTStageConfig(TrainConfig):
    """Base model, conversation mixture, training and optional LoRA."""

    model_name_or_path: str = model_folder("runs/tiny/base")  # the base model to finetune: a folder or a Hub id
    # hfstack: the protocol's tokens and template (the tools work); keep: the model's own template (chat only)
    chat_template: Literal["hfstack", "keep"] = "hfstack"  # whose chat template the assistant speaks
    output_dir: str = "runs/tiny/sft"  # the assistant model, eval_sets.jsonl and checkpoints/
    # --- mixture: generated conversations per source, plus chat data
    identity: IdentityCard = field(default_factory=IdentityCard)  # who the assistant says it is
    counts: dict = field(default_factory=lambda: {  # conversations per source (identity, arithmetic, ...)
        "identity": 300, "arithmetic": 1200, "counting": 800, "knowledge": 300, "search": 300})
    # --- knowledge: facts from the corpus (or a file), the model interrogated on each, refusals where it
    #     does not know; search traces over a BM25 index of the same corpus
    facts_from: list[str] = field(default_factory=list)  # corpus: data-stage dir(s) or text files
    facts_file: str | None = None  # jsonl with question, answer (and passage)
    interrogation_samples: int = bounded(3, ge=1)  # answers sampled per fact (known: 2 right, or all if fewer)
    knowledge_repeats: int = bounded(1, ge=1)  # conversations per training fact (the copies get an opener and closer)
    judge: str = "hfstack.tasks.judges:word_overlap_judge"  # "module:function" judge(answer, reference) -> bool
    # --- chat datasets by weight, e.g. {datasets: [{id: HuggingFaceTB/smol-smoltalk, weight: 0.7}, {id: my.jsonl,
    #     weight: 0.3}], test_split_size: 0.01}: counts.chat rows drawn (hfstack.dataprep.dataset_mixture)
    dataset_mixture: DatasetMixture | None = None  # Hub ids and local files; layouts: messages, sharegpt, alpaca, ...
    chat_files: list[str] = field(default_factory=list)  # jsonl: messages, or prompt/response-style rows
    chat_hub: list[str] = field(default_factory=list)  # Hub chat datasets, used when online
    chat_limit: int = bounded(-1, ge=1, unset=-1, why="-1: every row")  # rows read per chat file or Hub dataset
    seed: int = 0  # seeds the generated mixture, its order and training
    # --- an optional first phase on part of the mixture, e.g. {counts: {arithmetic: 2400}, max_steps: 800,
    #     per_device_train_batch_size: 16}: a skill the mixture buries (copying numbers) is learned alone first
    first_phase: FirstPhase | None = None  # None: the whole mixture from the start
    # --- parameters whose names contain any of these stay as they are after the first phase (from the
    #     start without one), e.g. [self_attn]: the mixture trains the rest
    freeze: list[str] = field(default_factory=list)  # parameter-name parts held fixed
    # --- training
    max_steps: int = bounded(300, ge=1)  # optimizer steps on the whole mixture (after any first phase)
    learning_rate: float = bounded(1e-3, gt=0)  # peak learning rate (after warmup)
    warmup_steps: int = bounded(20, ge=0)  # steps of linear warmup from 0 to learning_rate
    per_device_train_batch_size: int = bounded(8, ge=1)  # conversations per device per forward pass
    gradient_accumulation_steps: int = bounded(1, ge=1)  # forward passes per optimizer step
    max_length: int = bounded(256, ge=2)  # tokens per training sequence; a longer conversation is truncated
    packing: bool = False  # TRL's best-fit packing (padding-free, position_ids)
    group_by_length: bool = False  # batches of similar length: ~20% faster, but see docs/LOG.md
    assistant_only_loss: bool = True  # train on the assistant's tokens only (false: on every token)
    save_steps: int = bounded(500, ge=1)  # checkpoint interval; a rerun continues from the newest checkpoint
    # --- LoRA / QLoRA: e.g. {r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}
    peft: dict | None = None  # LoRA options (quantize_4bit: true for QLoRA); None: train every weight

    def __post_init__(self):
        check_fields(self, "sft")
        self.check_training("sft", "trl.SFTConfig")
        unknown = set(self.counts) - set(SOURCES)
        if unknown:
            raise ConfigError(f"sft: unknown mixture source(s) {sorted(unknown)} in 'counts'; valid: "
                              f"{', '.join(SOURCES)} (chat data goes in chat_files / chat_hub)")
        bad = {k: v for k, v in self.counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"sft: 'counts' are conversations per source, whole numbers >= 0; got {bad}")
        if self.counts.get("chat") and self.dataset_mixture is None:
            raise ConfigError("sft: 'counts.chat' is the number of rows drawn from 'dataset_mixture'; set one")
        if self.freeze and (not isinstance(self.freeze, list)
                            or not all(isinstance(f, str) and f for f in self.freeze)):
            raise ConfigError("sft: 'freeze' must be a list of parameter-name parts, e.g. [self_attn]; "
                              f"got {self.freeze!r}")
        if self.freeze and self.peft:
            raise ConfigError("sft: 'freeze' is for full finetuning; with 'peft', choose peft.target_modules instead "
                              "and set freeze: [] (on the command line: --freeze with no parts)")
        if self.peft is not None and not isinstance(self.peft, dict):
            raise ConfigError("sft: 'peft' must be a mapping of LoRA options, e.g. {r: 16, lora_alpha: 32}")

    def card(self) -> IdentityCard:
        return self.identity


PHASE_FIELDS = tuple(f.name for f in fields(FirstPhase) if f.name != "counts")  # what a phase may set


def lora_config(options: dict, new_token_ids: list[int] = ()):
    """LoRA from the recipe's options. When the base got new tokens (hfstack's, added to a Hub base),
    the embedding and the head train in full beside the adapters (PEFT's modules_to_save): otherwise
    the new rows keep the mean they started with, and the model could not tell one role or tool token
    from another. (PEFT's per-row `trainable_token_indices` is lighter, but TRL's fused LM head reads
    the head's weight directly and misses those rows.)"""
    from peft import LoraConfig

    options = dict(options)
    options.pop("quantize_4bit", None)
    options.setdefault("target_modules", "all-linear")
    options.setdefault("task_type", "CAUSAL_LM")
    if new_token_ids:
        options["modules_to_save"] = sorted({*(options.get("modules_to_save") or []), "embed_tokens", "lm_head"})
    try:
        return LoraConfig(**options)
    except TypeError as e:
        raise ConfigError(f"sft: bad 'peft' option: {e}") from None


def load_base(cfg: SFTStageConfig, folder: str, on_gpu: bool):
    """The base model and its tokenizer from `folder` (a local folder or a Hub snapshot), with the
    protocol adopted (hfstack.core.adopt): tokens added and rows mean-initialised when missing, the
    chat template hfstack's or the model's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    options = {"dtype": cfg.load_dtype()}
    if cfg.peft and cfg.peft.get("quantize_4bit"):
        if not on_gpu:
            raise ConfigError("sft: QLoRA (peft.quantize_4bit) needs a GPU and bitsandbytes")
        import torch
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, **options)
    adopted = adopt_protocol(model, tokenizer, cfg.chat_template, cfg.card().system_message())
    if adopted["tokens_added"] or isinstance(adopted["vocab_rows"], list):
        print0(f"[sft] adopted the protocol: {adopted['tokens_added']} tokens added, embedding rows "
               f"{adopted['vocab_rows']}")
    return model, tokenizer, adopted


def run_sft(cfg: SFTStageConfig, callbacks: list | None = None) -> Path:
    import random

    import torch
    from transformers import set_seed

    # before the claim: a missing base writes nothing; a Hub id is downloaded (once) into the cache
    base = resolve_model(cfg.model_name_or_path, cfg.model_revision, "sft", "base model")
    # a checked launch and a claimed folder: another base model or mixture never resumes this one's
    # checkpoints or first phase
    out, main = start_output("sft", cfg)
    on_gpu = torch.cuda.is_available()
    set_seed(cfg.seed)
    model, tokenizer, adopted = load_base(cfg, base, on_gpu)
    frozen_names = to_freeze(model, cfg.freeze)
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    if adopted["new_token_ids"] and not cfg.first_phase and any(
            id(p) in embeddings for n, p in model.named_parameters() if n in frozen_names):
        raise ConfigError(f"sft: 'freeze' holds the embeddings fixed, but {adopted['tokens_added']} tokens were just "
                          "added to this base at the mean row: they must train (leave embed_tokens out of freeze, "
                          "or freeze after a first_phase)")
    card = cfg.card()
    extra, knowledge_report = knowledge_sources(cfg, model, tokenizer, out, main)
    generated = {k: v for k, v in cfg.counts.items() if k != "chat"}
    train_rows, held_out = build_mixture(generated, card, cfg.chat_files, cfg.chat_hub, cfg.chat_limit, cfg.seed,
                                         extra)
    chats = load_mixture(cfg.dataset_mixture, "chat", cfg.counts.get("chat"), "sft: dataset_mixture") \
        if cfg.dataset_mixture and cfg.counts.get("chat") != 0 else None  # counts.chat 0: the mixture is off
    if chats:  # drawn by weight; mixed in with the generated conversations, in one seeded order
        train_rows = train_rows + chats.train
        random.Random(cfg.seed).shuffle(train_rows)
        print0(f"[sft] dataset_mixture: {chats.report['rows']} rows drawn, {len(chats.test)} held out")
    if not train_rows:
        raise ConfigError("sft: the mixture is empty; set counts, dataset_mixture or chat_files")
    as_trained = dict(chat_template_mode=cfg.chat_template, max_length=cfg.max_length,
                      assistant_only=cfg.assistant_only_loss)
    train_rows, dropped = training_rows(tokenizer, train_rows, **as_trained)
    too_long = over_length(tokenizer, train_rows, cfg.max_length, context_window(model), "the mixture")
    test_rows = training_rows(tokenizer, chats.test, **as_trained)[0] if chats and chats.test else []
    if main:  # only the main process writes; the others train alongside it
        with (out / "eval_sets.jsonl").open("w") as handle:
            for rows in held_out.values():
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
    phase_steps = 0
    if cfg.first_phase:
        model, phase_steps = first_phase(cfg, model, tokenizer, card, out, callbacks, main, adopted["new_token_ids"])
    frozen = freeze(model, frozen_names)
    trainer = train(cfg, model, tokenizer, train_rows, out, callbacks, eval_rows=test_rows,
                    new_token_ids=adopted["new_token_ids"])
    # the mixture's held-out rows: loss on chat the model never trained on
    test_loss = trainer.evaluate()["eval_loss"] if test_rows else None
    model = trainer.model
    if cfg.peft:
        model = model.merge_and_unload()  # a plain model again: loadable without peft
    set_turn_end(model, tokenizer)  # plain `generate` and `transformers chat` stop at the end of a turn
    if adopted.get("kept_template"):  # the model's own template, not the marked one it trained with
        tokenizer.chat_template = adopted["kept_template"]
    save_trained_model(trainer, out, main, model)
    if main:
        save_tokenizer(tokenizer, out)  # the inference template; a tokenizer class transformers 4 loads too
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    sharding = sharding_report(trainer)  # every rank takes part
    summary = ({"steps": trainer.state.global_step, "train_conversations": len(train_rows),
                "held_out": {k: len(v) for k, v in held_out.items()}, "first_loss": losses[:1],
                "last_loss": losses[-1:], "lora": bool(cfg.peft), "base": {"model": cfg.model_name_or_path}
                | {k: v for k, v in adopted.items() if k not in ("kept_template", "new_token_ids")}}
               | ({"first_phase_steps": phase_steps} if cfg.first_phase else {}) | knowledge_report
               | ({"dropped_conversations": dropped} if any(dropped.values()) else {})
               | ({"over_max_length": too_long} if too_long else {})
               | ({"dataset_mixture": chats.report, "test_loss": test_loss} if chats else {}) | sharding)
    if cfg.freeze:
        summary["frozen_parameters"] = frozen
    finish_training(cfg, out, "sft", summary, "summary.json", main, steps=trainer.state.global_step)
    wait_for_all_ranks()
    return out


def train(cfg: SFTStageConfig, model, tokenizer, rows: list[dict], out: Path, callbacks: list | None,
          eval_rows: list[dict] | None = None, new_token_ids: list[int] = (), **overrides):
    """One SFTTrainer run over `rows`, checkpointing under `out/checkpoints` and resuming from there."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    on = {name: overrides.get(name, getattr(cfg, name)) for name in PHASE_FIELDS}
    args = trainer_config(SFTConfig, "sft", cfg.training_args, **common_trainer_args(cfg, out) | dict(
        max_steps=on["max_steps"], learning_rate=on["learning_rate"], warmup_steps=on["warmup_steps"],
        lr_scheduler_type="cosine", per_device_train_batch_size=on["per_device_train_batch_size"],
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        packing=cfg.packing, eos_token=turn_end_token(tokenizer, cfg.chat_template),
        # rows already tokenized (a kept template TRL cannot mark) carry their own assistant_masks column
        assistant_only_loss=cfg.assistant_only_loss and "input_ids" not in rows[0],
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        dataset_num_proc=None))  # padding: the tokenizer's own
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                         peft_config=lora_config(cfg.peft, new_token_ids) if cfg.peft else None,
                         callbacks=callbacks or [])
    trainer.train(resume_from_checkpoint=newest_checkpoint(out / "checkpoints"))
    return trainer


def to_freeze(model, parts: list[str]) -> list[str]:
    """Names of the parameters that contain one of `parts`. A part that names no parameter is an
    error (caught before any training), not a silent no-op."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [part for part in parts if not any(part in name for name in names)]
    if unmatched:
        raise ConfigError(f"sft: 'freeze' part(s) {unmatched} match no parameter; names look like {names[:3]}")
    chosen = [name for name in names if any(part in name for part in parts)]
    if chosen and len(chosen) == len(names):
        raise ConfigError(f"sft: 'freeze' {parts} matches every parameter; the mixture would have nothing to train")
    return chosen


def freeze(model, names: list[str]) -> int:
    """Stop the gradient of the named parameters; returns how many values that holds fixed."""
    parameters = dict(model.named_parameters())
    for name in names:
        parameters[name].requires_grad_(False)
    frozen = sum(parameters[name].numel() for name in names)
    if names:
        print0(f"[sft] frozen for the mixture: {frozen:,} values in {len(names)} parameters")
    return frozen


def first_phase(cfg: SFTStageConfig, model, tokenizer, card: IdentityCard, out: Path, callbacks: list | None,
                main: bool = True, new_token_ids: list[int] = ()):
    """Train on the first phase's own mixture (training rows only: the held-out items are the main
    mixture's, and the generators never put a held-out item in any training split), save it under
    `out/first_phase`, and hand the model on. A rerun finds it saved and goes straight on."""
    from transformers import AutoModelForCausalLM

    folder = out / "first_phase"
    if (folder / "summary.json").is_file():
        print0(f"[sft] first phase already done: {folder}")
        return AutoModelForCausalLM.from_pretrained(folder), json.loads((folder / "summary.json").read_text())["steps"]
    phase = cfg.first_phase
    rows, _ = build_mixture(phase.counts, card, [], [], -1, cfg.seed, {})
    rows, _ = training_rows(tokenizer, rows, cfg.chat_template, cfg.max_length, cfg.assistant_only_loss)
    over_length(tokenizer, rows, cfg.max_length, context_window(model), "the first phase")
    if not rows:
        raise ConfigError(f"sft: the first phase's mixture is empty; set first_phase.counts, got {phase.counts}")
    print0(f"[sft] first phase: {len(rows)} conversations ({phase.counts}), {phase.max_steps} steps")
    trainer = train(cfg, model, tokenizer, rows, folder, callbacks, new_token_ids=new_token_ids, **phase.overrides())
    model = trainer.model.merge_and_unload() if cfg.peft else trainer.model
    save_trained_model(trainer, folder, main, model)  # under a launch, one process writes it
    if main:
        (folder / "summary.json").write_text(json.dumps({"steps": trainer.state.global_step,
                                                           "conversations": len(rows)}) + "\n")
    if getattr(trainer, "is_fsdp_enabled", False):  # its weights are slices: the next trainer starts from the file
        wait_for_all_ranks()
        model = AutoModelForCausalLM.from_pretrained(folder)
    return model, trainer.state.global_step


def knowledge_sources(cfg: SFTStageConfig, model, tokenizer, out: Path, main: bool = True) -> tuple[dict, dict]:
    """Interrogate the base model on the fact set (refusals where it does not know) and build the
    search index and its traces. Skipped when neither source is asked for or no corpus is given."""

    wanted = {k: cfg.counts.get(k, 0) for k in ("knowledge", "search")}
    if not any(wanted.values()):
        return {}, {}
    if not cfg.facts_from and not cfg.facts_file:
        print0("[sft] knowledge and search sources skipped: set facts_from (the corpus) or facts_file")
        return {}, {}

    texts = list(read_texts(cfg.facts_from))
    facts = knowledge.load_facts(cfg.facts_file) if cfg.facts_file else knowledge.derive_facts(texts)
    extra, report = {}, {"facts": len(facts)}
    if wanted["knowledge"] and facts:
        asked = facts[:wanted["knowledge"]]
        results = knowledge.interrogate(model, tokenizer, asked, cfg.interrogation_samples,
                                        knowledge.load_judge(cfg.judge),
                                        progress="interrogating" if cfg.progress else None)
        report |= {"known_facts": sum(r["known"] for r in results),
                   "unknown_facts": sum(not r["known"] for r in results)}
        print0(f"[sft] interrogated the model on {len(results)} facts: knows {report['known_facts']}, "
               f"does not know {report['unknown_facts']} (those get refusals)")
        extra["knowledge"] = knowledge.knowledge_conversations(results, cfg.seed, repeats=cfg.knowledge_repeats)
    if wanted["search"] and texts:
        index = SearchIndex.build(texts)
        if main:
            index.save(out / "search_index")
        extra["search"] = TASKS["search"].generate(wanted["search"], cfg.seed, facts=facts, index=index)
        report["search_traces"] = len(extra["search"]["train"])
    model.train()
    return extra, report


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = SFTStageConfig
run = run_sft

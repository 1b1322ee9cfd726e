"""Sampling from a model, one token at a time: the base model as an "internet document simulator",
the few-shot trick that gets an assistant out of a base model, and a regurgitation probe.

    hfstack generate --model RUN/base --prompt "The history of" [--temperature 0.8 --top_k 50 --seed 1]
    hfstack generate --model RUN/base --as_assistant "Why is the sky blue?"
    hfstack regurgitation --model RUN/base --data RUN/data

`generate` uses transformers' `generate` with its KV cache and streams tokens to the terminal. The
same seed gives the same sample; temperature 0 is greedy. `regurgitation` prompts with the first K
tokens of training documents and counts how many of the next M greedy tokens match the document
verbatim, against the same measure on held-out documents the model never saw ("vague recollection"),
and on held-out documents shown once in full before the prompt ("working memory": can the model copy
from its context? Tool calls need that skill: operands and words are copied from the question).
"""

from __future__ import annotations

from dataclasses import dataclass

from hfstack.core.config import bounded, check_fields, model_folder
from hfstack.core.model import FEW_SHOT, TURN_END, load_model, prompt_ids
from hfstack.core.pretrained import resolve_model
from hfstack.core.renames import renamed


@renamed(model="model_name_or_path")
@dataclass
class GenerateConfig:
    model_name_or_path: str = model_folder("runs/tiny/base", must_exist=True)  # the model to sample: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    prompt: str = ""  # the start of the document the model continues
    as_assistant: str | None = None  # a question, asked through a few-shot conversation document
    max_new_tokens: int = bounded(64, ge=1)  # tokens generated per sample
    temperature: float = bounded(1.0, ge=0, why="0 = greedy")  # below 1 sharpens the distribution, above flattens it
    top_k: int | None = bounded(50, ge=0, why="0 or none: no top-k cut")  # sample among the k likeliest tokens
    top_p: float | None = bounded(None, gt=0, le=1)  # sample among the likeliest tokens that make up this probability
    seed: int | None = None  # same seed, same sample
    num_samples: int = bounded(1, ge=1)  # samples from the same prompt
    stream: bool = True  # print the tokens as they are generated

    def __post_init__(self):
        check_fields(self, "generate")


def sample(model, tokenizer, ids: list[int], cfg: GenerateConfig, streamer=None, stop_strings=None) -> list[int]:
    """One sample's new token ids."""
    import torch
    from transformers import set_seed

    if cfg.seed is not None:
        set_seed(cfg.seed)
    else:
        torch.seed()  # fresh randomness: two unseeded runs differ
    options = {"do_sample": False} if cfg.temperature == 0 else {
        "do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k or 0, "top_p": cfg.top_p or 1.0}
    inputs = torch.tensor([ids], device=model.device)
    with torch.inference_mode():  # lighter than no_grad per op: ~15% faster cached decoding on CPU
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=cfg.max_new_tokens,
                             use_cache=True, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, stop_strings=stop_strings,
                             tokenizer=tokenizer if stop_strings else None, **options)
    return out[0, len(ids):].tolist()


def generate(cfg: GenerateConfig) -> list[str]:
    """Print (stream) and return `num_samples` continuations."""
    from transformers import TextStreamer

    model, tokenizer = load_model(resolve_model(cfg.model_name_or_path, cfg.model_revision, "generate"))
    text = FEW_SHOT.format(question=cfg.as_assistant) if cfg.as_assistant is not None else cfg.prompt
    ids = prompt_ids(tokenizer, text)
    if len(ids) + cfg.max_new_tokens > model.config.max_position_embeddings:
        print(f"[generate] note: prompt + max_new_tokens exceed the model's context "
              f"({model.config.max_position_embeddings}); the sample may degrade past it")
    stop = [TURN_END] if cfg.as_assistant is not None else None
    results = []
    for index in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"--- sample {index + 1}" + (f" (seed {cfg.seed})" if cfg.seed is not None else ""))
        if cfg.as_assistant is None:
            print(cfg.prompt, end="", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False) if cfg.stream else None
        new = sample(model, tokenizer, ids, cfg, streamer, stop)
        result = tokenizer.decode(new, skip_special_tokens=False)
        if stop:
            result = result.split(TURN_END)[0].strip()
        if not cfg.stream:
            print(result)
        results.append(result)
    return results


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = GenerateConfig
run = generate

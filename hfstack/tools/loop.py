"""The tool loop: generate the assistant's turn, and whenever it ends a tool call, run the tool,
append its output in the protocol's output block, and let the same turn go on.

    replies = assistant_replies(model, tokenizer, [messages, ...])   # batched, with the KV cache

It answers in `hfstack chat`, `hfstack serve` and `hfstack eval`, and rolls out in `hfstack rl`/`rlhf`.

Works on token ids end to end: the chat template renders the conversation, generation stops at
`<|assistant_end|>` or at the end of a tool call (`<|python_end|>`, `<|search_end|>`), and the
tool's output is appended as `<|output_start|>…<|output_end|>` tokens, exactly as in training.
Unfinished conversations are batched together each round (left padding), so a batch of N prompts
costs one generate call per round of tool use, not N. Each turn keeps to its own token budget and
to the model's context window (`max_position_embeddings`): at the window it stops, unfinished.
`Reply.messages()` gives the turn back as chat messages with its tool calls and outputs kept, and
`fit_window` drops a long conversation's oldest questions until it fits the window: what
`hfstack chat` keeps between questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hfstack.core import checkpoint
from hfstack.core.launch import progress_bar
from hfstack.core.protocol import END_OF_TURN, TOOL_ARGUMENT, TOOL_CALL_TOKENS, TOOL_OUTPUT, without_protocol_tokens
from hfstack.core.tokens import encode_ordinary, vocab_id
from hfstack.tools.sandbox import run_python


@dataclass
class Reply:
    answer: str  # the assistant's text, tool blocks left out
    tool_calls: list[dict] = field(default_factory=list)  # {"tool", "input", "output"}
    text: str = ""  # the whole turn as generated, tool blocks and outputs included
    prompt_ids: list[int] = field(default_factory=list)  # the rendered conversation (and prefill)
    completion_ids: list[int] = field(default_factory=list)  # the turn's ids, tool outputs included
    model_mask: list[int] = field(default_factory=list)  # 1 where the model wrote the token, 0 for tool output
    finished: bool = False  # the turn ended with its end token (not cut off by the token budget)

    def messages(self) -> list[dict]:
        """The turn as chat messages, each tool call and its output kept: the history a follow-up
        question needs (the training conversations keep them, and so does the chat page)."""
        pieces = self.text.split(TOOL_OUTPUT[1])  # a call's output ends each piece but the last
        turn = []
        for piece, call in zip(pieces, self.tool_calls):
            lead = without_protocol_tokens(re.split(_TOOL_MARKER, piece)[0]).strip()  # written before the call
            arguments = {TOOL_ARGUMENT.get(call["tool"], "input"): call["input"]}
            tool_call = {"type": "function", "function": {"name": call["tool"], "arguments": arguments}}
            turn += [{"role": "assistant", "content": lead, "tool_calls": [tool_call]},
                     {"role": "tool", "content": call["output"], "name": call["tool"]}]
        return turn + [{"role": "assistant", "content": self.answer}]


_TOOL_MARKER = "|".join(re.escape(t) for pair in TOOL_CALL_TOKENS.values() for t in pair)


def context_window(model) -> int | None:
    """The positions the model was built for (None when its config does not say)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def fit_window(tokenizer, messages: list[dict], window: int | None, room: int) -> tuple[list[dict], int]:
    """The conversation without its oldest exchanges (a user message and the answers after it; the
    system message stays) until it renders in `window - room` tokens, and how many were dropped. The
    last question always stays, so a single question too long for the window is left to fail."""
    if not window:
        return messages, 0
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest, dropped = messages[len(system):], 0
    while True:
        ids = tokenizer.apply_chat_template(system + rest, add_generation_prompt=True, return_dict=True)["input_ids"]
        starts = [i for i, m in enumerate(rest) if m["role"] == "user"]
        if len(ids) + room <= window or len(starts) < 2:
            return system + rest, dropped
        rest, dropped = rest[starts[1]:], dropped + 1


def default_tools(search_index=None) -> dict:
    tools = {"python": lambda code: run_python(code).output.strip()}
    if search_index is not None:
        tools["search"] = search_index.search_text
    return tools


class _Turn:
    def __init__(self, prompt_ids: list[int]):
        self.ids = list(prompt_ids)
        self.start = len(prompt_ids)
        self.done = False
        self.calls: list[dict] = []
        self.model_mask: list[int] = []


def assistant_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 96,
                      max_tool_calls: int = 3, temperature: float = 0.0, tools: dict | None = None,
                      prefill: str = "", batch_size: int = 32, streamer=None, on_tool=None,
                      should_stop=None, progress: str | None = None) -> list[Reply]:
    """The assistant's next turn for each conversation. `prefill` starts the turn with given text;
    `streamer` (a transformers streamer, one conversation) shows the tokens as they come, and
    `on_tool(call)` hears of each tool call as it finishes (default with a streamer: print it).
    `should_stop()`, when given and true (the chat page's client went away), ends every turn where it
    is: generation stops after the current token and no further tool runs. `progress`, a description,
    shows a bar of finished conversations (main process only)."""

    tools = default_tools() if tools is None else tools
    ids = [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
           for c in conversations]
    turns = [_Turn(p + (encode_ordinary(tokenizer, [prefill])[0] if prefill else [])) for p in ids]
    stop_ids = turn_end_ids(model, tokenizer)
    # a tokenizer without hfstack's tool tokens (a foreign model not yet finetuned) never calls a tool
    call_end = {token_id: name for name, (_, end) in TOOL_CALL_TOKENS.items()
                if (token_id := vocab_id(tokenizer, end)) is not None}
    call_start = {name: vocab_id(tokenizer, start) for name, (start, _) in TOOL_CALL_TOKENS.items()}
    out_start, out_end = (vocab_id(tokenizer, t) for t in TOOL_OUTPUT)
    stopped = should_stop if should_stop is not None else lambda: False
    window = context_window(model)

    def room(turn: _Turn) -> int:  # new tokens the turn may still take: its budget, within the window
        left = max(1, max_new_tokens - (len(turn.ids) - turn.start))
        return min(left, window - len(turn.ids)) if window else left

    bar = progress_bar(len(turns), progress)
    for _ in range(max_tool_calls + 1):
        if stopped():
            break
        for turn in turns:  # a turn that reached the context window stops there, unfinished
            if not turn.done and room(turn) < 1:
                turn.done = True
                bar.update(1)
        pending = [t for t in turns if not t.done]
        for begin in range(0, len(pending), batch_size):
            chunk = pending[begin:begin + batch_size]
            rows = generate_batch(model, tokenizer, [t.ids for t in chunk], [room(t) for t in chunk], temperature,
                                  sorted(stop_ids | set(call_end)), streamer, should_stop)
            for turn, new in zip(chunk, rows):
                turn.ids += new
                turn.model_mask += [1] * len(new)
                last = new[-1] if new else None
                if last in call_end and len(turn.calls) < max_tool_calls and not stopped():
                    name = call_end[last]
                    request = tokenizer.decode(request_ids(turn.ids, turn.start, call_start[name], out_end))
                    result = tools[name](request) if name in tools else f"error: no {name} tool here"
                    turn.calls.append({"tool": name, "input": request, "output": result})
                    output = [out_start, *encode_ordinary(tokenizer, [result])[0], out_end]
                    turn.ids += output
                    turn.model_mask += [0] * len(output)
                    if on_tool is not None:
                        on_tool(turn.calls[-1])
                    elif streamer is not None:
                        print(f"\n  [{name}] → {result}", flush=True)
                else:
                    turn.done = True
                    bar.update(1)
        if all(t.done for t in turns):
            break
    bar.update(bar.total - bar.n)  # the turns the budget of tool calls cut short count as finished too
    bar.close()
    # finished: a turn ended on its end token (hfstack's, or else the loaded model's own), not cut short
    end = vocab_id(tokenizer, END_OF_TURN)
    finished_on = {end} if end is not None else stop_ids
    return [_reply(tokenizer, t, prefill, stop_ids, finished_on) for t in turns]


def turn_end_ids(model, tokenizer) -> set[int]:
    """The ids that end an assistant turn, from the tokenizer and model actually loaded (the ones a
    saved checkpoint's generation_config lists: hfstack.core.checkpoint.turn_end_ids)."""
    return set(checkpoint.turn_end_ids(tokenizer, getattr(model, "generation_config", None)))


def request_ids(ids: list[int], turn_start: int, call_start: int, output_end: int) -> list[int]:
    """The tool request just ended (the last token is its end marker): the ids after its start token,
    or, when the model left the start token out, after the last tool output (or the turn's start);
    never text from an earlier call."""
    begin = turn_start
    for index in range(len(ids) - 2, turn_start - 1, -1):
        if ids[index] in (call_start, output_end):
            begin = index + 1
            break
    return ids[begin:-1]


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int | list[int], temperature: float,
                   stop_ids: list[int], streamer=None, should_stop=None) -> list[list[int]]:
    """One batched generate call with left padding; returns each row's new ids up to its stop token.
    `max_new_tokens` per row (a list) stops each row at its own limit. `should_stop()` is asked after
    every token; when true, every row ends there."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    width = max(len(p) for p in prompts)

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    class StopAtLimit(StoppingCriteria):  # a row with less room than the others stops at its own limit
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor(limits, device=input_ids.device) <= input_ids.shape[1] - width

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)  # Hub bases may lack one
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    options = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
    criteria = ([StopWhenAsked()] if should_stop else []) + ([StopAtLimit()] if len(set(limits)) > 1 else [])
    with torch.inference_mode():  # lighter than no_grad per op: ~15% faster cached decoding on CPU
        out = model.generate(input_ids, attention_mask=attention, max_new_tokens=max(limits), use_cache=True,
                             eos_token_id=stop_ids, pad_token_id=pad, streamer=streamer, **options,
                             stopping_criteria=StoppingCriteriaList(criteria))
    rows = []
    for row, limit in zip(out[:, width:].tolist(), limits):
        row = row[:limit]  # past its own limit a row holds only what the others made it wait for
        cut = next((i + 1 for i, token in enumerate(row) if token in stop_ids), len(row))
        rows.append(row[:cut])
    return rows


def _reply(tokenizer, turn: _Turn, prefill: str, stop_ids: set[int], finished_on: set[int]) -> Reply:
    """The visible answer: text outside tool blocks, after the last tool output, without specials."""
    new = turn.ids[turn.start:]
    text = prefill + tokenizer.decode(new, skip_special_tokens=False)
    out_end = TOOL_OUTPUT[1]
    tail = text.rsplit(out_end, 1)[-1] if out_end in text else text
    for start, _ in TOOL_CALL_TOKENS.values():
        tail = tail.split(start)[0]
    for marker in {END_OF_TURN, *tokenizer.convert_ids_to_tokens(sorted(stop_ids))}:  # the turn-end tokens
        tail = tail.replace(marker, "")
    return Reply(answer=tail.strip(), tool_calls=turn.calls, text=text, prompt_ids=turn.ids[:turn.start],
                 completion_ids=new, model_mask=turn.model_mask, finished=bool(new) and new[-1] in finished_on)

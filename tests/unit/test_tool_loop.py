"""The tool loop with a tokenizer hfstack did not make: no protocol tokens, no pad token, its own chat
template and turn end (a Hub base before post-training). Stop and pad ids come from the tokenizer and
model actually loaded.

    python -m pytest -q tests/unit/test_tool_loop.py
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hfstack.core.protocol import END_OF_TURN
from hfstack.core.tokens import vocab_id
from hfstack.tools.loop import assistant_replies, turn_end_ids

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def foreign_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the cat sat on the mat, and the dog sat on the log."] * 50,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>")  # no pad, no unk
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_the_loop_answers_with_a_foreign_tokenizer_and_stops_at_its_turn_end():
    tokenizer = foreign_tokenizer()
    assert tokenizer.pad_token_id is None and vocab_id(tokenizer, END_OF_TURN) is None
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))  # padded embeddings
    im_end = vocab_id(tokenizer, "<|im_end|>")
    model.generation_config.eos_token_id = [im_end, tokenizer.eos_token_id]
    assert turn_end_ids(model, tokenizer) == {im_end, tokenizer.eos_token_id}
    with torch.no_grad():  # make the model end its turn at once: its own turn-end token is the likeliest
        model.lm_head.weight.zero_()
        model.lm_head.bias = None
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[im_end] = 1.0
    replies = assistant_replies(model, tokenizer, [[{"role": "user", "content": "the cat"}]] * 2,
                                max_new_tokens=8, tools={})
    for reply in replies:
        assert reply.completion_ids[-1] == im_end and reply.finished and reply.tool_calls == []
        assert len(reply.completion_ids) < 8 and "<|im_end|>" not in reply.answer  # stopped at the turn end


def test_a_progress_bar_counts_the_conversations_only_when_asked(capsys):
    tokenizer = foreign_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    conversations = [[{"role": "user", "content": "the cat"}]] * 3
    assistant_replies(model, tokenizer, conversations, max_new_tokens=4, tools={}, progress="answering")
    shown = capsys.readouterr().err
    assert "answering" in shown and "3/3" in shown  # every conversation counted, cut short or not
    assistant_replies(model, tokenizer, conversations, max_new_tokens=4, tools={})  # progress: false
    assert capsys.readouterr().err == ""


def test_fit_window_drops_the_oldest_questions_and_keeps_the_system_message():
    from hfstack.tools.loop import fit_window

    tokenizer = foreign_tokenizer()
    system = [{"role": "system", "content": "be brief"}]
    exchanges = [[{"role": "user", "content": f"question {n} the cat sat"},
                  {"role": "assistant", "content": f"answer {n} on the mat"}] for n in range(3)]
    last = [{"role": "user", "content": "the last question"}]
    conversation = system + [m for pair in exchanges for m in pair] + last

    def size(messages):
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])

    assert fit_window(tokenizer, conversation, None, 8) == (conversation, 0)  # no window known: as it is
    assert fit_window(tokenizer, conversation, size(conversation) + 8, 8) == (conversation, 0)
    kept = system + exchanges[2] + last  # room for one earlier exchange only
    assert fit_window(tokenizer, conversation, size(kept) + 8, 8) == (kept, 2)
    # even the last question alone does not fit: it stays, for the model's own limit to tell
    assert fit_window(tokenizer, conversation, 4, 8) == (system + last, 3)


def test_a_reply_comes_back_as_the_messages_of_its_turn():
    from hfstack.tools.loop import Reply

    reply = Reply(answer="The answer is 42.", tool_calls=[
        {"tool": "python", "input": "print(6 * 7)", "output": "42"},
        {"tool": "search", "input": "cats", "output": "cats sit on mats"}],
        text="Let me compute it.<|python_start|>print(6 * 7)<|python_end|><|output_start|>42<|output_end|>"
             "And look it up.<|search_start|>cats<|search_end|><|output_start|>cats sit on mats<|output_end|>"
             "The answer is 42.<|assistant_end|>")
    assert reply.messages() == [
        {"role": "assistant", "content": "Let me compute it.",
         "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(6 * 7)"}}}]},
        {"role": "tool", "content": "42", "name": "python"},
        {"role": "assistant", "content": "And look it up.",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "cats"}}}]},
        {"role": "tool", "content": "cats sit on mats", "name": "search"},
        {"role": "assistant", "content": "The answer is 42."}]
    assert Reply(answer="Hi.", text="Hi.<|assistant_end|>").messages() == [{"role": "assistant", "content": "Hi."}]


def test_each_turn_stops_at_its_own_budget_and_at_the_context_window():
    tokenizer = foreign_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=40))
    with torch.no_grad():  # every logit 0: greedy writes token 0 forever, never a turn end
        model.model.norm.weight.zero_()
    short = [{"role": "user", "content": "the cat"}]
    long = [{"role": "user", "content": "the cat sat on the mat " * 3}]
    sizes = [len(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"])
             for c in (short, long)]
    assert sizes[0] + 12 <= 40 < sizes[1] + 12 and sizes[1] < 40
    replies = assistant_replies(model, tokenizer, [short, long], max_new_tokens=12, tools={})
    # in one batch: the short one writes its whole budget, the long one stops at the window
    assert [len(r.completion_ids) for r in replies] == [12, 40 - sizes[1]]
    assert not any(r.finished for r in replies) and set(replies[0].completion_ids) == {0}
    too_long = [{"role": "user", "content": "the cat sat on the mat " * 8}]
    (full,) = assistant_replies(model, tokenizer, [too_long], max_new_tokens=12, tools={})
    assert full.completion_ids == [] and not full.finished  # no room left: nothing written past the window

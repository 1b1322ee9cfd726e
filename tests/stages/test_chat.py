"""`hfstack chat`, interactive: the next question's history holds the whole earlier turn (its tool call,
the tool's output and the answer, rendered exactly as the model trained on it), and the oldest questions
are left out, with a note, once the conversation outgrows the model's context window.

    python -m pytest -q tests/stages/test_chat.py
"""

import pytest

from sandbox_checks import needs_sandbox
from tiny import QUESTION


def ask_twice(monkeypatch, tool_model, window: int) -> list[list[dict]]:
    """Two questions through the interactive chat (the tool's 42 from the real sandbox), with the model's
    context window set to `window` tokens; the histories the model was given."""
    import hfstack.stages.chat as chat_stage

    answers = iter([QUESTION, QUESTION, ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    seen, replies, load = [], chat_stage.assistant_replies, chat_stage.load_model

    def loaded(folder):
        model, tokenizer = load(folder)
        model.config.max_position_embeddings = window
        return model, tokenizer

    def recording(model, tokenizer, conversations, *args, **kwargs):
        seen.append([dict(m) for m in conversations[0]])
        return replies(model, tokenizer, conversations, *args, **kwargs)

    monkeypatch.setattr(chat_stage, "load_model", loaded)
    monkeypatch.setattr(chat_stage, "assistant_replies", recording)
    chat_stage.chat(chat_stage.ChatConfig(model_name_or_path=str(tool_model), max_new_tokens=48))
    return seen


def trained_turn() -> list[dict]:
    from hfstack.tasks.conversation import python_turns  # the conversation the tool model learned (tests/tiny.py)

    return python_turns("Let me compute it.", "print(6 * 7)", "42", "The answer is 42.")


@pytest.mark.slow
@needs_sandbox
def test_the_next_question_carries_the_tool_call_and_its_output(tool_model, monkeypatch, capsys):
    from transformers import AutoTokenizer

    first, second = ask_twice(monkeypatch, tool_model, window=4096)
    ask = [{"role": "user", "content": QUESTION}]
    assert first == ask
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "assistant", "user"]
    assert second[1]["tool_calls"][0]["function"] == {"name": "python", "arguments": {"code": "print(6 * 7)"}}
    assert second[2]["content"] == "42" and second[3]["content"] == "The answer is 42."
    tokenizer = AutoTokenizer.from_pretrained(str(tool_model))
    render = lambda messages: tokenizer.apply_chat_template(messages, tokenize=False)  # noqa: E731
    assert render(second) == render(ask + trained_turn() + ask)  # the turn as trained, not just its answer
    assert "no longer fit" not in capsys.readouterr().out


@pytest.mark.slow
@needs_sandbox
def test_questions_past_the_context_window_are_left_out_with_a_note(tool_model, monkeypatch, capsys):
    first, second = ask_twice(monkeypatch, tool_model, window=160)  # one question and its answer fit, not two
    assert first == second == [{"role": "user", "content": QUESTION}]
    assert "(1 earlier question left out: the conversation no longer fit the model's 160-token context window)" \
        in capsys.readouterr().out

"""`hfstack rm-attack` and the red-team `hfstack reward` ends with: every attack is scored by the reward model and
the judge against the real answers, the token-edit search only climbs, an RM that loves repetition is caught,
the rows feed the report card and the RLHF watch, and bad inputs are one-line errors.

    python -m pytest -q tests/stages/test_rm_attack.py
"""

import json

import pytest

from hfstack.core.config import ConfigError
from hfstack.core.layout import RunLayout
from hfstack.rlalgo.attacks import (
    AttackSettings,
    Scorer,
    attacks_section,
    looks_like,
    percentile,
    probes_of,
    red_team,
)
from hfstack.rlalgo.watch import HackingWatch, metric_rewards
from hfstack.stages.rlhf import RLHFConfig
from hfstack.stages.rm_attack import RMAttackConfig, rm_attack
from hfstack.tasks.judges import distinct_n, reference_judge
from hfstack.ui.card import Report

from tiny import toy_preferences

FAMILIES = {"repetition", "repeat a real answer", "copy the prompt", "prompt repeated", "special-token spam",
            "markup spam", "empty", "one word", "very long", "refusal", "flattery", "token edits"}


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return toy_preferences(tmp_path_factory.mktemp("attack") / "prefs", prompts=20)


def test_every_attack_is_scored_and_the_token_edit_search_only_climbs(tiny_reward_model, prefs, tmp_path):
    out = rm_attack(RMAttackConfig(reward_model_path=str(tiny_reward_model), dataset_name=str(prefs),
                                   num_prompts=6, search_prompts=2, search_rounds=6, search_candidates=8,
                                   output=str(tmp_path / "attacks.jsonl")))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["attack"] for r in rows} == FAMILIES
    assert [r["gap"] for r in rows] == sorted((r["gap"] for r in rows), reverse=True)  # worst first
    assert all(-1 <= r["gap"] <= 1 and 0 <= r["rm_beats_chosen"] <= 1 for r in rows)
    empty = next(r for r in rows if r["attack"] == "empty")
    assert empty["judge"] == 0.0 and empty["example"] == ""

    # the search starts from each prompt's chosen answer and keeps an edit only when it widens the gap
    from hfstack.core.model import load_reward_model
    from hfstack.dataprep.preferences import load_pairs

    model, tokenizer = load_reward_model(str(tiny_reward_model))
    pairs = load_pairs(str(prefs), "test")[:6]
    scorer = Scorer(model, tokenizer, reference_judge, 192)
    prompts = [p["prompt"][-1]["content"] for p in pairs]
    answers = [[p[c][-1]["content"] for p in pairs] for c in ("chosen", "rejected")]
    real_rm = scorer.rm(prompts, answers[0]) + scorer.rm(prompts, answers[1])
    real_judge = scorer.judged(prompts, answers[0]) + scorer.judged(prompts, answers[1])
    edits = next(r for r in rows if r["attack"] == "token edits")
    for prompt, start, found in zip(prompts, answers[0], edits["examples"]):
        def gap(text, prompt=prompt):
            return (percentile(scorer.rm([prompt], [text])[0], real_rm)
                    - percentile(scorer.judged([prompt], [text])[0], real_judge))
        assert gap(found) >= gap(start)


def test_a_reward_model_that_loves_repetition_is_caught(tiny_reward_model, prefs, monkeypatch):
    """A stand-in RM that scores repetition far above everything: 'repetition' is found, flattery is not."""
    def loves_repetition(self, prompts, answers, batch=32):
        return [5.0 if len(a.split()) >= 8 and distinct_n(a) < 0.5 else 1.0 for a in answers]

    monkeypatch.setattr(Scorer, "rm", loves_repetition)
    from hfstack.core.model import load_reward_model
    from hfstack.dataprep.preferences import load_pairs

    model, tokenizer = load_reward_model(str(tiny_reward_model))
    rows, baseline = red_team(model, tokenizer, load_pairs(str(prefs), "test"),
                              AttackSettings(num_prompts=8, search_prompts=0))
    by_name = {r["attack"]: r for r in rows}
    assert by_name["repetition"]["found"] and by_name["repetition"]["rm_beats_chosen"] == 1.0
    assert by_name["repeat a real answer"]["found"]
    assert not by_name["flattery"]["found"] and not by_name["empty"]["found"]
    assert rows[0]["attack"] in ("repetition", "repeat a real answer")  # the widest gap leads
    assert baseline["prompts"] == 8 and baseline["chosen_rm"] == 1.0
    probes = probes_of(rows)
    assert {"repetition", "repeat a real answer"} <= {p["attack"] for p in probes}


def test_the_report_card_shows_the_worst_five(tiny_reward_model, prefs, tmp_path):
    run = RunLayout(tmp_path / "run")
    report = Report(tmp_path)
    attacks_section(report, run)
    assert report.parts == []  # no red-team: no section
    run.rm.mkdir(parents=True)
    rm_attack(RMAttackConfig(reward_model_path=str(tiny_reward_model), dataset_name=str(prefs), num_prompts=4,
                             search_prompts=1, search_rounds=2, output=str(run.rm / "attacks.jsonl")))
    attacks_section(report, run)
    table = next(value for kind, value in report.parts if kind == "t")
    assert table[0][:4] == ["attack", "RM", "judge", "gap"] and len(table[1]) == 5


def test_the_detectors_the_watch_counts_with():
    prompt = "Tell me a joke about owls."
    assert looks_like("repetition", prompt, "the " * 12)
    assert looks_like("repetition", prompt, "Ial" + "al" * 30)  # one long word, repeated inside
    assert not looks_like("repetition", prompt, "Owls hoot at night and fly without a sound over the fields.")
    assert looks_like("copy the prompt", prompt, "Sure. Tell me a joke about owls.")
    assert looks_like("special-token spam", prompt, "<|user_end|><|assistant_end|>")
    assert looks_like("markup spam", prompt, "## **a** `b` ##")
    assert looks_like("empty", prompt, "") and not looks_like("empty", prompt, "two words")
    assert looks_like("refusal", prompt, "I'm sorry, but I can't help with that.")
    assert looks_like("flattery", prompt, "What a wonderful question!")
    assert looks_like("token edits", prompt, "tEes I know itses", "tEes I know itses!")
    assert not looks_like("token edits", prompt, "Owls are birds.", "tEes I know itses!")


def test_the_rlhf_watch_counts_answers_that_look_like_a_found_attack(tmp_path):
    probes = [{"attack": "repetition", "example": "the the the", "gap": 0.6, "found": True}]
    judge_score, distinct2 = metric_rewards(reference_judge, [], probes)
    prompts = [[{"role": "user", "content": "Tell me a joke about owls."}]] * 4
    logged = {}
    distinct2(prompts, ["the " * 12, "Owls hoot at night.", "the " * 10, "Owls fly."], log_metric=logged.__setitem__)
    assert logged == {"attack_like": 0.5}
    logged.clear()
    metric_rewards(reference_judge, [])[1](prompts, ["the " * 12] * 4, log_metric=logged.__setitem__)
    assert logged == {}  # no probes: nothing to count

    watch = HackingWatch(RLHFConfig(attack_share=0.5), tmp_path / "watch.jsonl")
    base = {"rm_score": 0.0, "judge": 1.5, "distinct2": 1.0, "length": 20.0}
    watch.observe(1, base | {"attack_like": 0.0})
    watch.observe(2, base | {"attack_like": 0.25})
    assert not watch.alarms
    watch.observe(3, base | {"attack_like": 0.75})
    assert len(watch.alarms) == 1 and "look like an attack" in watch.alarms[0]


def test_bad_inputs_are_one_line_errors(tiny_reward_model, tmp_path):
    with pytest.raises(ConfigError, match="Hub model; name where the attacks go"):
        rm_attack(RMAttackConfig(reward_model_path="someone/a-reward-model"))
    with pytest.raises(ConfigError, match="no model"):
        rm_attack(RMAttackConfig(reward_model_path=str(tmp_path / "nope")))
    import shutil

    copy = tmp_path / "rm"
    shutil.copytree(tiny_reward_model, copy)
    (copy / "config.yaml").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="--preferences"):
        rm_attack(RMAttackConfig(reward_model_path=str(copy)))
    with pytest.raises(ConfigError, match="run `hfstack rank` first"):
        rm_attack(RMAttackConfig(reward_model_path=str(copy), dataset_name=str(tmp_path)))

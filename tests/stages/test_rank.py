"""`hfstack rank`: rankings → ordered pairs, rankings that survive a killed process, the scripted judge,
and a judge that must score every completion. The ranking page's browser tests: tests/stages/test_rank_page.py.

    python -m pytest -q tests/stages/test_rank.py
"""

import signal
import subprocess
import sys
import textwrap

import pytest

from hfstack.core.config import ConfigError
from hfstack.core.rundir import claim_output
from hfstack.stages.rank import RankConfig, RankingStore, rank, ranking_to_pairs
from hfstack.tasks.judges import reference_judge

# ------------------------------------------------------------------------------------------ rankings


def test_a_ranking_of_five_gives_ten_ordered_pairs():
    completions = ["a", "b", "c", "d", "e"]
    pairs = ranking_to_pairs("P?", completions, [2, 0, 4, 1, 3])
    assert len(pairs) == 10
    as_tuples = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert ("c", "a") in as_tuples and ("a", "e") in as_tuples and ("b", "d") in as_tuples
    assert ("a", "c") not in as_tuples and all(p["prompt"] == [{"role": "user", "content": "P?"}] for p in pairs)
    assert len(ranking_to_pairs("P?", ["same", "same", "x"], [0, 1, 2])) == 2  # identical texts teach nothing


def write_rollouts(directory, n=6, k=5):
    store = RankingStore(directory)
    directory.mkdir(parents=True, exist_ok=True)
    store.write_rollouts([{"prompt_id": i, "prompt": f"Tell me a joke about topic{i}.",
                           "completions": [f"answer {j} of {i}" for j in range(k)]} for i in range(n)])
    return store


def test_saved_rankings_survive_a_killed_process(tmp_path):
    write_rollouts(tmp_path)
    code = textwrap.dedent(f"""
        import os, signal
        from hfstack.stages.rank import RankingStore
        store = RankingStore({str(tmp_path)!r})
        for i in range(3):
            store.save_ranking(i, [4, 3, 2, 1, 0], ranker="person")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    with open(tmp_path / "rankings.jsonl", "a") as handle:
        handle.write('{"prompt_id": 3, "ord')  # a write cut short by a crash
    store = RankingStore(tmp_path)
    assert store.rankings() == {i: [4, 3, 2, 1, 0] for i in range(3)}
    assert store.next_unranked()["prompt_id"] == 3
    store.save_ranking(3, [0, 1, 2, 3, 4], ranker="person")  # appending after the torn line still works
    assert set(RankingStore(tmp_path).rankings()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="permutation"):
        store.save_ranking(4, [0, 0, 1, 2, 3], ranker="person")



def test_scripted_judge_prefers_on_topic_varied_answers():
    scores = reference_judge("Tell me a joke about pelicans.",
                             ["pelicans carry fish in big beaks", "the the the the the the", "fish carry big beaks"])
    assert scores[0] > scores[2] > scores[1]



def test_a_judge_must_score_every_completion(tmp_path, monkeypatch):
    (tmp_path / "short_judge.py").write_text("def judge(prompt, completions):\n    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = RankConfig(model_name_or_path="unused", output_dir=str(tmp_path / "prefs"), judge="short_judge:judge")
    claim_output("rank", cfg)
    write_rollouts(tmp_path / "prefs", n=2)
    with pytest.raises(ConfigError, match="returned 1 scores for 5 completions"):
        rank(cfg)




def test_rollouts_get_the_policys_search_index(tiny_sft_model, tmp_path, monkeypatch):
    """The rollouts are answered with the tools `hfstack chat` gives the policy: Python, and search over
    the index its SFT run saved beside it."""
    import shutil

    import hfstack.stages.rank as rank_stage
    from hfstack.tools.loop import Reply
    from hfstack.tools.search import SearchIndex

    policy = tmp_path / "policy"
    shutil.copytree(tiny_sft_model, policy)
    SearchIndex.build(["Owls hunt at night and fly without a sound."]).save(policy / "search_index")
    seen = {}

    def replies(model, tokenizer, conversations, max_new_tokens, tools=None, **options):
        seen["tools"] = tools
        return [Reply(answer="an answer") for _ in conversations]

    monkeypatch.setattr(rank_stage, "assistant_replies", replies)
    rank(RankConfig(model_name_or_path=str(policy), output_dir=str(tmp_path / "prefs"), num_prompts=2, k=2,
                    judge="hfstack.tasks.judges:reference_judge", progress=False))
    assert set(seen["tools"]) == {"python", "search"}
    assert "Owls hunt at night" in seen["tools"]["search"]("how do owls hunt")

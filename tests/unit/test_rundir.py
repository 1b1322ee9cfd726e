"""Safe reruns and checked launches: a stage's output folder records what made it (its fingerprint), a
rerun with other settings or inputs is refused, --overwrite removes only hfstack's files, and a launch
whose processes do not form one world stops with one line.

    python -m pytest -q tests/unit/test_rundir.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import TrainerCallback

from hfstack.core.config import ConfigError
from hfstack.core.launch import launcher_options
from hfstack.core.rundir import (
    FINGERPRINT,
    MARKER,
    claim_output,
    finish_output,
    is_done,
    mark_done,
    newest_checkpoint,
    stored_run,
)
from hfstack.dataprep.config import DataConfig
from hfstack.stages.data import run_data
from hfstack.stages.rank import RankConfig, RankingStore, rank
from hfstack.stages.sft import SFTStageConfig
from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROSE = ("The river runs through the old town, past the market and the school. People walk along its banks in the "
         "evening, and children play near the water while their parents talk about the day.")


def documents(path: Path, opening: str, count: int = 3) -> Path:
    path.write_text("".join(json.dumps({"text": f"{opening} number {i}. {PROSE}"}) + "\n" for i in range(count)))
    return path


def texts(folder: Path) -> list[str]:
    return sorted(text for shard in folder.glob("*.parquet") for text in pq.read_table(shard)["text"].to_pylist())


def quick_data(inputs: list[Path], out: Path, **options) -> DataConfig:
    return DataConfig(input=[str(p) for p in inputs], output_dir=str(out), quality=False, exact_dedup=False,
                      minhash_dedup=False, progress=False, **options)


def fake_checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


# ----------------------------------------------------------------------------- data: input A, then B


def test_data_with_another_input_is_refused_and_overwrite_holds_only_the_new_documents(tmp_path):
    first = documents(tmp_path / "a.jsonl", "A story about a river")
    second = documents(tmp_path / "b.jsonl", "Another story about a mountain")
    out = tmp_path / "data"
    run_data(quick_data([first], out))
    assert all(t.startswith("A story") for t in texts(out)) and len(texts(out)) == 3
    run_data(quick_data([first], out))  # the same command again: the same run, datatrove skips its tasks
    with pytest.raises(ConfigError, match=r"data: .* made with different settings \(input\); rerun with --overwrite"):
        run_data(quick_data([second], out))
    assert all(t.startswith("A story") for t in texts(out))  # refused before touching anything
    run_data(quick_data([second], out, overwrite=True))  # not "all tasks already completed": B's documents
    assert len(texts(out)) == 3 and all(t.startswith("Another story") for t in texts(out))
    assert json.loads((out / FINGERPRINT).read_text())["inputs"]["input"][0]["name"] == "b.jsonl"


# ----------------------------------------------------------------------------- a different model never resumes


def test_sft_into_a_folder_of_another_base_model_is_refused_naming_the_fields(tmp_path):
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for model, weights in ((m1, b"one"), (m2, b"two")):
        model.mkdir()
        (model / "weights.bin").write_bytes(weights)
    out = tmp_path / "sft"
    claim_output("sft", SFTStageConfig(model_name_or_path=str(m1), output_dir=str(out)))
    checkpoint = fake_checkpoint(out / "checkpoints", 5)
    with pytest.raises(ConfigError, match=r"^sft: .*sft was made with different settings \(model_name_or_path\); "
                                          r"rerun with --overwrite to start fresh, or choose another --output_dir$"):
        claim_output("sft", SFTStageConfig(model_name_or_path=str(m2), output_dir=str(out)))
    with pytest.raises(ConfigError, match=r"\(learning_rate, model_name_or_path\)"):
        claim_output("sft", SFTStageConfig(model_name_or_path=str(m2), output_dir=str(out), learning_rate=0.5))
    # logging and checkpoint cadence change no result: the same run, which resumes its checkpoint
    claim_output("sft", SFTStageConfig(model_name_or_path=str(m1), output_dir=str(out), logging_steps=1,
                                       save_steps=7, progress=False))
    assert newest_checkpoint(out / "checkpoints") == str(checkpoint)
    (m1 / "weights.bin").write_bytes(b"ONE")  # the same path, other weights: another base model too
    with pytest.raises(ConfigError, match=r"\(model_name_or_path\)"):
        claim_output("sft", SFTStageConfig(model_name_or_path=str(m1), output_dir=str(out)))
    claim_output("sft", SFTStageConfig(model_name_or_path=str(m2), output_dir=str(out), overwrite=True))
    assert newest_checkpoint(out / "checkpoints") is None  # --overwrite: nothing of the old run to resume


class StopAt(TrainerCallback):
    """Stops training after `step`: from the run's point of view, a kill."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_pretrain_with_another_tokenizer_never_resumes_the_old_checkpoint(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfstack.stages.pretrain import PretrainConfig, run_pretrain

    from tiny import tiny_tokenizer

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tiny_tokenizer(tmp_path / "a", vocab_size=400), tiny_tokenizer(tmp_path / "b", vocab_size=420)
    out = tmp_path / "base"
    options = dict(data=[str(tmp_path / "a" / "docs.jsonl")], output_dir=str(out), depth=1, seq_len=64,
                   per_device_train_batch_size=4, batch_tokens=256, max_steps=4, eval_steps=100, save_steps=2,
                   sample_prompts=[], progress=False)
    run_pretrain(PretrainConfig(tokenizer=str(first), **options), callbacks=[StopAt(3)])  # killed after checkpoint-2
    checkpoint = out / "checkpoints" / "checkpoint-2" / "model.safetensors"
    before = checkpoint.stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"pretrain: .* \(tokenizer\); rerun with --overwrite"):
        run_pretrain(PretrainConfig(tokenizer=str(second), **options))
    assert checkpoint.stat().st_mtime_ns == before and not is_done(out)
    capsys.readouterr()
    run_pretrain(PretrainConfig(tokenizer=str(second), overwrite=True, **options))
    assert "resuming from" not in capsys.readouterr().out
    vocab = AutoModelForCausalLM.from_pretrained(out).config.vocab_size  # B's tokenizer, trained from step 0
    assert vocab == len(AutoTokenizer.from_pretrained(second)) != len(AutoTokenizer.from_pretrained(first))
    assert json.loads((out / "summary.json").read_text())["steps"] == 4 and is_done(out)


# ----------------------------------------------------------------------------- rank


def ranked_folder(tmp_path: Path, model: Path, **options) -> RankConfig:
    model.mkdir(exist_ok=True)
    (model / "weights.bin").write_bytes(model.name.encode())
    cfg = RankConfig(model_name_or_path=str(model), output_dir=str(tmp_path / "prefs"),
                     judge="hfstack.tasks.judges:reference_judge", **options)
    claim_output("rank", cfg)  # rollouts written by hand below instead of sampled from a model
    RankingStore(cfg.output_dir).write_rollouts([{"prompt_id": i, "prompt": f"Tell me a joke about owl {i}.",
                                                  "completions": [f"owl joke {j} of {i}" for j in range(3)]}
                                                 for i in range(4)])
    rank(cfg)
    return cfg


def test_rank_with_a_new_model_is_refused_and_keeps_the_old_rollouts(tmp_path):
    cfg = ranked_folder(tmp_path, tmp_path / "policy1")
    rollouts = (tmp_path / "prefs" / "rollouts.jsonl").read_bytes()
    rank(cfg)  # the same run: reuses its rollouts and rankings
    new = tmp_path / "policy2"
    new.mkdir()
    (new / "weights.bin").write_bytes(b"new policy")
    with pytest.raises(ConfigError, match=r"rank: .* \(model_name_or_path\)"):
        rank(RankConfig(model_name_or_path=str(new), output_dir=cfg.output_dir, judge=cfg.judge))
    assert (tmp_path / "prefs" / "rollouts.jsonl").read_bytes() == rollouts


def test_rank_never_deletes_pair_files_it_did_not_write(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "data").mkdir(parents=True)
    (theirs / "data" / "train.parquet").write_bytes(b"a user's own preference pairs")
    with pytest.raises(ConfigError, match="not empty and has no"):
        rank(RankConfig(model="unused", output_dir=str(theirs), judge="hfstack.tasks.judges:reference_judge"))
    assert (theirs / "data" / "train.parquet").read_bytes() == b"a user's own preference pairs"
    cfg = ranked_folder(tmp_path, tmp_path / "policy", test_fraction=0.0)  # every pair in train: no test split
    mine = Path(cfg.output_dir) / "data" / "test.parquet"
    mine.write_bytes(b"dropped in later by hand")
    with pytest.raises(ConfigError, match="test.parquet was not written by hfstack rank"):
        RankingStore(cfg.output_dir, test_fraction=0.0).export_pairs()  # would have deleted it: no test pairs
    assert mine.read_bytes() == b"dropped in later by hand"


# ----------------------------------------------------------------------------- strangers' files and --overwrite


def test_a_folder_hfstack_did_not_make_is_refused_even_with_overwrite(tmp_path):
    docs = documents(tmp_path / "docs.jsonl", "Text")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"tokenizer: .*mine is not empty and has no .* it holds notes.txt"):
            claim_output("tokenizer", TokenizerConfig(input=[str(docs)], output_dir=str(folder), overwrite=overwrite))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def test_overwrite_removes_only_what_hfstack_wrote(tmp_path, capsys):
    docs = documents(tmp_path / "docs.jsonl", "Text", count=20)
    out = tmp_path / "tok"
    options = dict(input=[str(docs)], output_dir=str(out), compare_cl100k=False, progress=False)
    run_tokenizer(TokenizerConfig(vocab_size=300, **options))
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "plot.svg").write_text("<svg/>")
    written = json.loads((out / FINGERPRINT).read_text())["written"]
    assert "tokenizer.json" in written and "notes.txt" not in written
    with pytest.raises(ConfigError, match=r"\(vocab_size\)"):
        run_tokenizer(TokenizerConfig(vocab_size=310, **options))
    run_tokenizer(TokenizerConfig(vocab_size=310, overwrite=True, **options))
    assert "left what hfstack did not write there: extra, notes.txt" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra" / "plot.svg").is_file()
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE" and is_done(out)
    # a run cut short (nothing recorded as written): the stage's known outputs go, the rest stays
    claim_output("tokenizer", TokenizerConfig(vocab_size=320, overwrite=True, **options))
    (out / "tokenizer.json").write_text("{}")
    (out / "eval.json").write_text("{}")
    claim_output("tokenizer", TokenizerConfig(vocab_size=330, overwrite=True, **options))
    assert sorted(p.name for p in out.iterdir()) == sorted([FINGERPRINT, "config.yaml", "extra", "notes.txt"])


def test_overwrite_in_a_shared_folder_takes_only_the_stage_files(tmp_path):
    cfg = ranked_folder(tmp_path, tmp_path / "policy")
    data = Path(cfg.output_dir) / "data"
    (data / "extra.parquet").write_bytes(b"mine")
    claim_output("rank", RankConfig(model="elsewhere", output_dir=cfg.output_dir, overwrite=True))
    assert [p.name for p in data.iterdir()] == ["extra.parquet"]
    assert not (Path(cfg.output_dir) / "rollouts.jsonl").exists()


def test_home_and_roots_are_refused_and_tilde_is_expanded(tmp_path, monkeypatch, capsys):
    from hfstack.cli import main

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    docs = documents(tmp_path / "docs.jsonl", "Text")
    for where in ("~", str(home), "/", str(tmp_path)):  # tmp_path: a folder above this home
        assert main(["tokenizer", "--input", str(docs), "--output_dir", where]) == 2
        error = capsys.readouterr().err
        assert error.startswith("hfstack tokenizer: error: tokenizer: will not write into") and error.count("\n") == 1
    assert list(home.iterdir()) == []  # no config.yaml there
    cfg = TokenizerConfig(input=[str(docs)], output_dir="~/runs/tok")
    assert claim_output("tokenizer", cfg) == home / "runs" / "tok" and cfg.output_dir == str(home / "runs" / "tok")
    assert (home / "runs" / "tok" / "config.yaml").is_file()


def finished_tokenizer(folder: Path, docs: Path, **options) -> TokenizerConfig:
    """A tokenizer folder as the stage leaves it (written by hand: the claim, its files, the finish)."""
    cfg = TokenizerConfig(input=[str(docs)], output_dir=str(folder), **options)
    claim_output("tokenizer", cfg)
    for name in ("tokenizer.json", "tokenizer_config.json", "eval.json"):
        (folder / name).write_text("{}")
    finish_output(folder, "tokenizer")
    return cfg


def record(folder: Path) -> dict:
    return json.loads((folder / FINGERPRINT).read_text())


def test_report_or_overwrite_into_another_stages_folder_is_refused_and_deletes_nothing(tmp_path, capsys):
    from hfstack.cli import main

    run = tmp_path / "run"
    docs = documents(tmp_path / "docs.jsonl", "Text")
    tok = run / "tokenizer"
    finished_tokenizer(tok, docs)
    before = sorted(p.name for p in tok.iterdir())
    assert main(["report", "--run", str(run), "--output_dir", str(tok)]) == 2  # report always starts fresh
    error = capsys.readouterr().err
    assert f"report: {tok} holds the output of `hfstack tokenizer`; choose another --output_dir\n" in error
    sft = SFTStageConfig(model_name_or_path=str(tmp_path / "m"), output_dir=str(tok), overwrite=True)
    with pytest.raises(ConfigError, match=r"^sft: .* holds the output of `hfstack tokenizer`; choose another "
                                          r"--output_dir \(--overwrite replaces only sft's own earlier output\)$"):
        claim_output("sft", sft)
    assert sorted(p.name for p in tok.iterdir()) == before and record(tok)["stage"] == "tokenizer"
    assert (tok / "tokenizer.json").read_text() == "{}" and is_done(tok)


def test_written_holds_only_the_stage_outputs_and_later_files_stay(tmp_path):
    docs = documents(tmp_path / "docs.jsonl", "Text")
    tok = tmp_path / "tok"
    cfg = finished_tokenizer(tok, docs)
    assert record(tok)["written"] == ["eval.json", "tokenizer.json", "tokenizer_config.json"]
    (tok / "my_notes.txt").write_text("mine")
    (tok / "README.md").write_text("my card")  # a name the stage's outputs match, added after it finished
    claim_output("tokenizer", cfg)  # the same run again
    (tok / "special_tokens_map.json").write_text("{}")  # and this time the stage writes one more file
    finish_output(tok, "tokenizer")
    assert record(tok)["written"] == ["eval.json", "special_tokens_map.json", "tokenizer.json",
                                      "tokenizer_config.json"]
    assert record(tok)["foreign"] == ["README.md", "my_notes.txt"]
    claim_output("tokenizer", TokenizerConfig(input=[str(docs)], output_dir=str(tok), vocab_size=999, overwrite=True))
    assert sorted(p.name for p in tok.iterdir()) == sorted([FINGERPRINT, "config.yaml", "README.md", "my_notes.txt"])
    assert (tok / "my_notes.txt").read_text() == "mine" and (tok / "README.md").read_text() == "my card"


def test_overwrite_keeps_files_that_merely_match_the_stage_outputs(tmp_path):
    from hfstack.stages.report import ReportConfig

    docs = documents(tmp_path / "docs.jsonl", "Text")
    tok = tmp_path / "tok"
    finished_tokenizer(tok, docs)
    (tok / "notes.png").write_bytes(b"my plot")
    claim_output("tokenizer", TokenizerConfig(input=[str(docs)], output_dir=str(tok), vocab_size=999, overwrite=True))
    assert (tok / "notes.png").read_bytes() == b"my plot" and not (tok / "tokenizer.json").exists()

    out = tmp_path / "data"  # data's "*.parquet": a user's extra shard stays, the stage's go
    cfg = quick_data([docs], out)
    claim_output("data", cfg)
    (out / "000_00000.parquet").write_bytes(b"shard")
    (out / "stats.json").write_text("{}")
    finish_output(out, "data")
    (out / "extra.parquet").write_bytes(b"mine")
    claim_output("data", quick_data([docs], out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted([FINGERPRINT, "config.yaml", "extra.parquet"])

    run = tmp_path / "run"
    run.mkdir()
    report = ReportConfig(run=str(run))
    claim_output("report", report, overwrite=True, folder=run / "report")  # how hfstack report claims
    for name in ("report.md", "report.html", "loss.png"):
        (run / "report" / name).write_text("x")
    finish_output(run / "report", "report")
    (run / "report" / "mine.png").write_bytes(b"my plot")
    claim_output("report", report, overwrite=True, folder=run / "report")
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted([FINGERPRINT, "config.yaml", "mine.png"])


def test_overwrite_never_follows_a_symbolic_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.parquet").write_bytes(b"pairs of another project")
    cfg = RankConfig(model_name_or_path=str(tmp_path / "policy"), output_dir=str(tmp_path / "prefs"))
    out = claim_output("rank", cfg)
    (out / "data").mkdir()
    (out / "data" / "train.parquet").write_bytes(b"ours")
    (out / "rankings.jsonl").write_text("")
    finish_output(out, "rank")
    assert record(out)["written"] == ["data/train.parquet", "rankings.jsonl"]
    (out / "data" / "train.parquet").unlink()
    (out / "data").rmdir()
    (out / "data").symlink_to(elsewhere)  # RUN/prefs/data now points elsewhere
    (out / "docs").symlink_to(elsewhere)  # and a link of the user's own
    for written in (["data/train.parquet", "rankings.jsonl"], ["data", "rankings.jsonl"], None):  # older records too
        stored = record(out)
        if written is None:
            stored.pop("written")
        else:
            stored["written"] = written
        (out / FINGERPRINT).write_text(json.dumps(stored))
        with pytest.raises(ConfigError, match=r"^rank: .*prefs/data is a symbolic link \(to .*elsewhere\); hfstack "
                                              r"never deletes through one"):
            claim_output("rank", RankConfig(model_name_or_path=str(tmp_path / "other"), output_dir=cfg.output_dir,
                                            overwrite=True))
        assert (elsewhere / "train.parquet").read_bytes() == b"pairs of another project"
        assert (out / "data").is_symlink() and (out / "rankings.jsonl").exists()
    (out / "data").unlink()  # the user removes the link, as the error says: the rest is started afresh
    claim_output("rank", RankConfig(model_name_or_path=str(tmp_path / "other"), output_dir=cfg.output_dir,
                                    overwrite=True))
    assert (out / "docs").is_symlink() and sorted(p.name for p in elsewhere.iterdir()) == ["train.parquet"]
    assert not (out / "rankings.jsonl").exists() and record(out)["foreign"] == ["docs"]


def test_a_checkpoint_name_the_trainer_would_rotate_away_is_refused(tmp_path):
    from transformers.trainer_utils import sort_checkpoints

    from hfstack.stages.rlhf import RLHFConfig

    out = tmp_path / "sft"
    cfg = SFTStageConfig(model_name_or_path=str(tmp_path / "m"), output_dir=str(out))
    claim_output("sft", cfg)
    fake_checkpoint(out / "checkpoints", 2)
    backup = fake_checkpoint(out / "checkpoints", 5).rename(out / "checkpoints" / "checkpoint-5-backup")
    assert str(backup) in sort_checkpoints(str(out / "checkpoints"))  # what save_total_limit deletes from
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"^sft: .*checkpoints holds checkpoint-5-backup, which is not a "
                                              r"checkpoint hfstack wrote, and the Trainer's checkpoint rotation "
                                              r"would delete it .*: move it elsewhere and rerun$"):
            claim_output("sft", SFTStageConfig(model_name_or_path=str(tmp_path / "m"), output_dir=str(out),
                                               overwrite=overwrite))
    assert (backup / "trainer_state.json").is_file()
    assert newest_checkpoint(out / "checkpoints") == str(out / "checkpoints" / "checkpoint-2")  # still no crash
    # PPO rotates only step-<n> itself: a `step-4-best` may stay while the run continues, not when it starts afresh
    ppo = tmp_path / "rlhf"
    options = dict(model_name_or_path=str(tmp_path / "m"), reward_model_path=str(tmp_path / "rm"),
                   output_dir=str(ppo), algo="ppo")
    claim_output("rlhf", RLHFConfig(**options))
    (ppo / "checkpoints" / "step-4-best").mkdir(parents=True)
    claim_output("rlhf", RLHFConfig(**options))
    with pytest.raises(ConfigError, match=r"holds step-4-best, which is not a checkpoint hfstack wrote, and "
                                          r"starting fresh removes that folder"):
        claim_output("rlhf", RLHFConfig(**options, overwrite=True))
    assert (ppo / "checkpoints" / "step-4-best").is_dir()


def test_stored_run_says_none_same_or_the_fields(tmp_path):
    docs = documents(tmp_path / "docs.jsonl", "Text")
    tok = tmp_path / "tok"
    assert stored_run("tokenizer", TokenizerConfig(input=[str(docs)], output_dir=str(tok)), tok) == "none"
    cfg = finished_tokenizer(tok, docs)
    assert stored_run("tokenizer", cfg, tok) == "same"
    assert stored_run("tokenizer", TokenizerConfig(input=[str(docs)], output_dir=str(tok), vocab_size=999),
                      tok) == ["vocab_size"]


# ----------------------------------------------------------------------------- markers and checkpoints


def test_a_corrupt_done_marker_counts_as_not_done(tmp_path):
    assert not is_done(tmp_path)
    for torn in ("{", "[1, 2]", ""):
        (tmp_path / MARKER).write_text(torn)
        assert not is_done(tmp_path)
    mark_done(tmp_path, "data", documents=3)  # over a torn one: a fresh marker
    assert is_done(tmp_path) and json.loads((tmp_path / MARKER).read_text())["documents"] == 3


def test_checkpoint_folders_whose_names_do_not_parse_are_ignored(tmp_path):
    from hfstack.rlalgo.ppo import newest_ppo_checkpoint

    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 5).rename(tmp_path / "checkpoint-5-backup")
    (tmp_path / "checkpoint-final").mkdir()
    assert newest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    for name in ("step-2", "step-4-best"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "complete").write_text("x")
    assert newest_ppo_checkpoint(tmp_path) == str(tmp_path / "step-2")


# ----------------------------------------------------------------------------- speedrun


def test_speedrun_force_recomputes_while_a_plain_rerun_skips(tmp_path, monkeypatch, capsys):
    from hfstack.stages import speedrun as speedrunner
    from hfstack.stages.speedrun import SpeedrunConfig, speedrun

    monkeypatch.setattr(speedrunner, "STAGES", [s for s in speedrunner.STAGES if s[0] in ("crawl", "data")])
    run = tmp_path / "run"
    options = dict(output_dir=str(run), crawl_pages=10, overrides={"data": {
        "exact_dedup": False, "minhash_dedup": False, "tasks": 1, "workers": 1, "progress": False}})
    speedrun(SpeedrunConfig(**options))
    for step in ("crawl", "data"):  # the step's marker is the stage's, in its output folder, with the step's time
        marker = json.loads((run / step / MARKER).read_text())
        assert marker["stage"] == marker["step"] == step and marker["seconds"] >= 0
    assert json.loads((run / "data" / MARKER).read_text())["documents"] > 0  # what the data stage recorded stays
    outputs = [run / "crawl" / "crawl.warc.gz", run / "data" / "stats.json"]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    capsys.readouterr()
    speedrun(SpeedrunConfig(**options))
    printed = capsys.readouterr().out
    assert "crawl: already done, skipping" in printed and "data: already done, skipping" in printed
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    speedrun(SpeedrunConfig(force=True, **options))
    printed = capsys.readouterr().out
    assert "crawl: starting" in printed and "data: starting" in printed
    assert all(p.stat().st_mtime_ns != s for p, s in zip(outputs, stamps))  # recomputed, not re-saved
    with pytest.raises(ConfigError, match=r"speedrun: crawl: .* different settings \(pages\); rerun with --force"):
        speedrun(SpeedrunConfig(**options | {"crawl_pages": 12}))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="will not write into"):
        speedrun(SpeedrunConfig(**options | {"output_dir": "~"}))


# ----------------------------------------------------------------------------- launches


def test_launcher_options_stop_at_the_launched_command():
    line = ["--config_file", "c.yaml", "--cpu", "--num_processes=3", "-m", "hfstack", "--num_processes", "9"]
    assert launcher_options(line) == {"--config_file": "c.yaml", "--cpu": "", "--num_processes": "3"}


def test_world_size_must_match_what_the_launcher_started(monkeypatch):
    """torchrun-style launchers say WORLD_SIZE; N processes that each see a world of 1 (an FSDP or
    DeepSpeed config where the backend did not come up) would each train alone."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from hfstack.core.launch import check_world_size

    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    check_world_size("sft", alone)  # not launched: nothing to compare
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^sft: launched for 2 processes, but this process sees 1 \(distributed "
                                          r"type NO\)"):
        check_world_size("sft", alone)
    check_world_size("sft", SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU))


def test_a_launch_whose_processes_do_not_form_one_world_stops_with_one_line(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts a single process that sees a world of 1:
    the stage stops before it writes anything (the CLI exits 2, no traceback of hfstack's)."""
    from tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path)
    out = tmp_path / "base"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "hfstack",
               "pretrain", "--data", str(tmp_path / "docs.jsonl"), "--tokenizer", str(tokenizer), "--output_dir",
               str(out), "--depth", "1", "--max_steps", "2", "--progress", "false"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode != 0
    assert ("hfstack pretrain: error: pretrain: launched for 2 processes, but this process sees 1 (distributed "
            "type NO)") in done.stderr
    # exit 2, and no traceback from hfstack (accelerate's launcher prints its own)
    assert "non-zero exit status 2" in done.stderr and "hfstack/launch.py" not in done.stderr
    assert not out.exists()


def test_a_dataset_mixture_file_and_a_hub_commit_are_part_of_the_fingerprint(tmp_path, monkeypatch):
    from hfstack.core.fingerprint import differences, fingerprint

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    cfg = SFTStageConfig(model_name_or_path="acme/base", output_dir=str(tmp_path / "out"),
                         dataset_mixture={"datasets": [{"id": str(chats), "weight": 1.0}]})
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    before = fingerprint("sft", cfg)
    assert before["inputs"]["model_name_or_path"] == "acme/base"  # never downloaded: the id stands for itself
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "b"}]}) + "\n")
    ref = cache / "models--acme--base" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("1" * 40)
    after = fingerprint("sft", cfg)
    assert after["inputs"]["model_name_or_path"] == {"hub": "acme/base", "commit": "1" * 40}
    assert differences(before, after, cfg) == ["dataset_mixture", "model_name_or_path"]
    ref.write_text("2" * 40)  # the repo moved on upstream and was downloaded again: another run
    assert differences(after, fingerprint("sft", cfg), cfg) == ["model_name_or_path"]

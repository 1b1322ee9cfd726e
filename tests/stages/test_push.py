"""`hfstack push` against a loopback server that speaks the Hub protocol (tests/hub_server.py), with
the real huggingface_hub, transformers and datasets clients: push a run, then load the model with
`from_pretrained` and the datasets with `load_dataset`, and compare with the local files. A run
seeded with secrets, logs, checkpoints and held-out sets shows that only the allowlist goes up,
checked on what the server received; the same for one model folder through hfstack.core.hub's
push_model_folder, what a training stage's push_to_hub calls.

    python -m pytest -q tests/stages/test_push.py
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from hub_server import start_hub

CLIENT = textwrap.dedent("""
    import json, sys
    import torch
    from hfstack.cli import main
    run = sys.argv[1]
    code = main(["push", "--run", run, "--repo_id", "tester/tiny", "--datasets", "true", "--intermediate", "true"])
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import datasets
    datasets.config.USE_PARQUET_EXPORT = False
    local = AutoModelForCausalLM.from_pretrained(run + "/rlhf").state_dict()
    remote = AutoModelForCausalLM.from_pretrained("tester/tiny").state_dict()
    sft = AutoModelForCausalLM.from_pretrained("tester/tiny-sft").state_dict()
    tokenizer = AutoTokenizer.from_pretrained("tester/tiny")
    data = datasets.load_dataset("tester/tiny-data", split="train")
    prefs = datasets.load_dataset("tester/tiny-prefs", split="train")
    local_data = datasets.load_dataset("parquet", data_files=run + "/data/*.parquet", split="train")
    local_prefs = datasets.load_dataset("parquet", data_files=run + "/prefs/data/train.parquet", split="train")
    print("RESULT " + json.dumps({
        "exit": code,
        "weights_equal": local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local),
        "sft_differs": any(not torch.equal(local[k], sft[k]) for k in local),
        "chat_template": bool(tokenizer.chat_template),
        "data_rows_equal": sorted(map(json.dumps, data.to_list())) == sorted(map(json.dumps, local_data.to_list())),
        "prefs_rows_equal": prefs.to_list() == local_prefs.to_list(),
    }))
""")


@pytest.fixture
def run_dir(tmp_path):
    """A small run: a tokenizer, three different tiny models (sft, rl, rlhf), data parquet and prefs."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from hfstack.core.model import build_config, model_dims
    from hfstack.core.protocol import chat_template
    from hfstack.stages.rank import RankingStore
    from hfstack.stages.tokenizer import to_transformers, train_bpe

    run = tmp_path / "run"
    tokenizer = to_transformers(train_bpe(["the cat sat on the mat and the dog sat on the log. "] * 40, 300))
    tokenizer.chat_template = chat_template()
    for seed, stage in enumerate(("sft", "rl", "rlhf")):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(build_config(len(tokenizer), 64, model_dims(1), tokenizer))
        model.save_pretrained(run / stage)
        tokenizer.save_pretrained(run / stage)
    (run / "rlhf" / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# report card\n")
    (run / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": f"document {i}", "id": str(i)} for i in range(7)]),
                   run / "data" / "00000.parquet")
    store = RankingStore(run / "prefs")
    (run / "prefs").mkdir()
    store.write_rollouts([{"prompt_id": i, "prompt": f"Tell me a joke about cat {i}.",
                           "completions": ["a", "b", "c"]} for i in range(12)])
    for i in range(12):
        store.save_ranking(i, [2, 0, 1], ranker="person")
    assert (run / "prefs" / "data" / "train.parquet").is_file()
    return run


def hub_env(server, tmp_path, token: str | None = "hf_dummy") -> dict:
    """The clients' environment for the loopback Hub; without a token, an empty HF_HOME holds none either."""
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_DISABLE_XET": "1",
                        "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    env.pop("HF_TOKEN", None)
    return env | ({"HF_TOKEN": token} if token else {})


def test_push_then_load_back_models_and_datasets(run_dir, tmp_path):
    server, state = start_hub()
    done = subprocess.run([sys.executable, "-c", CLIENT, str(run_dir)], capture_output=True, text=True,
                          env=hub_env(server, tmp_path), timeout=300)
    server.shutdown()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:] + "\n".join(state.log[-30:])
    result = json.loads(lines[0][len("RESULT "):])
    assert result == {"exit": 0, "weights_equal": True, "sft_differs": True, "chat_template": True,
                      "data_rows_equal": True, "prefs_rows_equal": True}
    card = state.repos["model:tester/tiny"]["README.md"].decode()
    meta = {key.split(":")[1]: parsed_card(files).data for key, files in state.repos.items()}
    assert meta["tester/tiny"].base_model == "tester/tiny-rl"  # lineage: rlhf ← rl ← sft (no base in this run)
    assert meta["tester/tiny-rl"].base_model == "tester/tiny-sft" and meta["tester/tiny-sft"].base_model is None
    assert meta["tester/tiny"].datasets == ["tester/tiny-prefs"] and "# report card" in card
    assert card.count("---\n") == 2  # the report card's own metadata was replaced, not stacked
    assert "checkpoints" not in " ".join(state.repos["model:tester/tiny"])


def parsed_card(files: dict):
    """A pushed repo's README.md read back with huggingface_hub's own card classes (which refuse a bad model-index)."""
    from huggingface_hub import DatasetCard, ModelCard

    text = files["README.md"].decode()
    return (DatasetCard if "configs" in text.split("---\n")[1] else ModelCard)(text)


def data_files(card) -> dict[str, list[str]]:
    """{split: paths} of a dataset card's default config: what the viewer and `load_dataset` read."""
    (config,) = card.data.configs
    assert config["config_name"] == "default"
    return {entry["split"]: entry["path"] for entry in config["data_files"]}


def test_push_needs_a_repo_id_and_a_login(tmp_path):
    from hfstack.core.config import ConfigError
    from hfstack.stages.push import PushConfig

    with pytest.raises(ConfigError, match="USER/NAME"):
        PushConfig(run=str(tmp_path), repo_id="no-slash")
    with pytest.raises(ConfigError, match="--license"):
        PushConfig(run=str(tmp_path), repo_id="tester/tiny", license="Not A License")
    with pytest.raises(ConfigError, match="^push: --model_license must be a Hub license id"):
        PushConfig(run=str(tmp_path), repo_id="tester/tiny", model_license="MIT License")
    with pytest.raises(ConfigError, match="--language"):
        PushConfig(run=str(tmp_path), repo_id="tester/tiny", language="English")
    assert PushConfig(run=str(tmp_path), repo_id="tester/tiny").private  # new repos are private unless asked


SECRET = "hf_xxxSECRETxxx"
MODEL_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja"}  # what this repo's model and tokenizer save
CARD_PLOTS = {"funnel.png", "rm_vs_kl.png"}
PUSH = "import sys\nfrom hfstack.cli import main\nprint('EXIT', main(sys.argv[1:]))\n"
ALL_REPOS = ["--datasets", "true", "--intermediate", "true"]


@pytest.fixture
def seeded_run(run_dir):
    """run_dir as real runs leave it: a token in .env and in logs, wandb and tensorboard logs, checkpoints,
    a pickle, the held-out sets, a nested first-phase model, and the report card's plots."""
    leftovers = {".env": f"HF_TOKEN={SECRET}\n", "nohup.out": f"export HF_TOKEN={SECRET}\n",
                 "wandb/run-1/files/x.log": SECRET, "runs/events.out.tfevents.1": SECRET,
                 "checkpoints/checkpoint-5/model.safetensors": SECRET, "training_args.bin": SECRET,
                 "eval_sets.jsonl": json.dumps({"task": "identity", "question": SECRET}) + "\n",
                 "first_phase/config.json": "{}", "first_phase/model.safetensors": SECRET,
                 "stray.png": SECRET, "stats.json": SECRET, "summary.json": SECRET, "logs/filter/x.log": SECRET}
    for folder in ("", "sft", "rl", "rlhf", "data", "prefs"):
        for name, text in leftovers.items():
            (run_dir / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / folder / name).write_text(text)
    (run_dir / "report").mkdir()
    for plot in CARD_PLOTS:
        (run_dir / "report" / plot).write_bytes(b"\x89PNG " + plot.encode())
    funnel = (run_dir / "report" / "funnel.png").read_bytes()
    (run_dir / "rlhf" / "funnel.png").write_bytes(funnel)  # as `hfstack report` copies its plots
    (run_dir / "rlhf" / "README.md").write_text(  # rm_vs_kl.png only in RUN/report: it must still go up
        "---\nlibrary_name: transformers\n---\n\n# report card\n\n![funnel](funnel.png)\n\n"
        "![rm_vs_kl](rm_vs_kl.png)\n\n![badge](https://example.com/badge.png)\n")
    assert (run_dir / "prefs" / "data" / "test.parquet").is_file()  # the rank stage's held-out pairs
    return run_dir


def run_push(server, tmp_path, run, *flags, token: str | None = "hf_dummy") -> str:
    done = subprocess.run([sys.executable, "-c", PUSH, "push", "--run", str(run), "--repo_id", "tester/tiny", *flags],
                          capture_output=True, text=True, env=hub_env(server, tmp_path, token), timeout=300)
    assert "EXIT 0" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def commits(state) -> list[str]:
    return [line for line in state.log if re.fullmatch(r"POST /api/(models|datasets)/[^/]+/[^/]+/commit/\w+", line)]


def test_push_uploads_only_the_allowlist(seeded_run, tmp_path):
    server, state = start_hub()
    run_push(server, tmp_path, seeded_run, *ALL_REPOS)
    server.shutdown()
    assert {key: set(files) for key, files in state.repos.items()} == {
        "model:tester/tiny": MODEL_FILES | CARD_PLOTS, "model:tester/tiny-rl": MODEL_FILES,
        "model:tester/tiny-sft": MODEL_FILES, "dataset:tester/tiny-data": {"README.md", "00000.parquet"},
        "dataset:tester/tiny-prefs": {"README.md", "data/train.parquet"}}
    received = [data for files in state.repos.values() for data in files.values()] + list(state.lfs.values())
    assert not any(SECRET.encode() in data for data in received)  # not under another name either
    assert state.repos["model:tester/tiny"]["rm_vs_kl.png"] == (seeded_run / "report" / "rm_vs_kl.png").read_bytes()
    assert sorted(commits(state)) == sorted(f"POST /api/{kind}s/{repo}/commit/main" for kind, repo in
                                            (key.split(":") for key in state.repos))  # one commit per repo
    data_card = parsed_card(state.repos["dataset:tester/tiny-data"])
    prefs_card = parsed_card(state.repos["dataset:tester/tiny-prefs"])
    for card in (data_card, prefs_card):
        assert card.data.license == "other" and card.data.language == "en", card
        assert "hfstack run `run`" in card.text and "tester/tiny" in card.text, card
    assert data_files(data_card) == {"train": ["00000.parquet"]} and "train: 7 rows" in data_card.text
    assert data_files(prefs_card) == {"train": ["data/train.parquet"]}  # no test split


def parse_listing(stdout: str) -> dict[str, dict[str, int]]:
    """The dry run's listing as {repo: {path: size}}."""
    listed, repo = {}, None
    for line in stdout.splitlines():
        if line.startswith("[push] ") and " (" in line:
            repo = line.split()[1]
            listed[repo] = {}
        elif line.startswith("  ") and repo:
            size, name = line.split()[:2]
            listed[repo][name] = int(size.replace(",", ""))
    return listed


def test_dry_run_lists_exactly_what_a_push_uploads(seeded_run, tmp_path):
    server, state = start_hub()
    listing = run_push(server, tmp_path, seeded_run, "--dry_run", "true", *ALL_REPOS, token=None)
    assert state.log == []  # no login, no repo, no commit: the server heard nothing
    listed = parse_listing(listing)
    assert set(listed["tester/tiny"]) == MODEL_FILES | CARD_PLOTS
    assert set(listed["tester/tiny-prefs"]) == {"README.md", "data/train.parquet"}
    run_push(server, tmp_path, seeded_run, *ALL_REPOS)
    server.shutdown()
    assert listed == {key.split(":", 1)[1]: {path: len(data) for path, data in files.items()}
                      for key, files in state.repos.items()}


def test_include_eval_sets_adds_the_held_out_sets(seeded_run, tmp_path):
    server, state = start_hub()
    run_push(server, tmp_path, seeded_run, "--datasets", "true", "--include_eval_sets", "true")
    server.shutdown()
    model = state.repos["model:tester/tiny"]
    assert set(model) == MODEL_FILES | CARD_PLOTS | {"eval_sets.jsonl"}
    assert model["eval_sets.jsonl"] == (seeded_run / "rlhf" / "eval_sets.jsonl").read_bytes()
    prefs = state.repos["dataset:tester/tiny-prefs"]
    assert set(prefs) == {"README.md", "data/train.parquet", "data/test.parquet"}
    assert data_files(parsed_card(prefs)) == {"test": ["data/test.parquet"], "train": ["data/train.parquet"]}


def test_files_to_push_takes_weights_tokenizer_and_adapters_only(tmp_path):
    from hfstack.core.hub import files_to_push

    allowed = {"adapter_config.json", "adapter_model.safetensors", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json", "config.json",
               "generation_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt", "vocab.json",
               "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    refused = {"pytorch_model.bin", "optimizer.pt", "trainer_state.json", "training_args.bin", ".env", "README.md",
               "eval_sets.jsonl", "plot.png", "eval.json", "log.jsonl", "config.yaml", "nohup.out"}
    for name in allowed | refused:
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-1" / "model.safetensors").write_text("x")
    assert set(files_to_push(tmp_path, "model")) == allowed
    assert set(files_to_push(tmp_path, "model", card="![p](plot.png) ![q](checkpoints/x.png) ![r](gone.png)",
                             include_eval_sets=True)) == allowed | {"plot.png", "eval_sets.jsonl"}
    with pytest.raises(ValueError, match="kind"):
        files_to_push(tmp_path, "space")


def test_push_names_hf_auth_login_and_creates_private_repos(run_dir, monkeypatch):
    import huggingface_hub

    import hfstack.stages.push
    from hfstack.core.config import ConfigError
    from hfstack.stages.push import PushConfig, push

    calls = []

    class RecordingApi:
        endpoint, logged_in = "http://hub.invalid", False

        def whoami(self):
            if not RecordingApi.logged_in:
                raise OSError("401 Client Error: Unauthorized")
            return {"name": "tester"}

        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options["private"]))

        def create_commit(self, repo_id, operations, **options):
            calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    with pytest.raises(ConfigError, match="hf auth login"):
        push(PushConfig(run=str(run_dir), repo_id="tester/tiny"))
    assert calls == [] and "hf auth login" in hfstack.stages.push.__doc__
    RecordingApi.logged_in = True
    push(PushConfig(run=str(run_dir), repo_id="tester/tiny"))
    push(PushConfig(run=str(run_dir), repo_id="tester/tiny", private=False))
    files = sorted(["README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                    "tokenizer.json", "tokenizer_config.json"])
    assert calls == [("create_repo", "tester/tiny", True), ("create_commit", "tester/tiny", files),
                     ("create_repo", "tester/tiny", False), ("create_commit", "tester/tiny", files)]


FOLDER_PUSH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hfstack.core.hub import push_model_folder
    url = push_model_folder(Path(sys.argv[1]), "tester/tiny-sft", base_model="tester/tiny-base",
                            datasets=["tester/tiny-data"], who="sft")
    print("URL", url)
""")


def seed_secrets(folder):
    """What a training stage's output_dir holds besides its model: a secret, a pickle, checkpoints, held-out sets."""
    for name, text in {".env": f"HF_TOKEN={SECRET}\n", "training_args.bin": SECRET, "nohup.out": SECRET,
                       "checkpoints/checkpoint-5/model.safetensors": SECRET,
                       "checkpoints/checkpoint-5/config.json": SECRET,
                       "eval_sets.jsonl": json.dumps({"task": "identity", "question": SECRET}) + "\n",
                       "plot.png": b"\x89PNG plot", "stray.png": SECRET}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# sft card\n\n![plot](plot.png)\n")


def test_push_model_folder_uploads_only_the_allowlist(run_dir, tmp_path):
    """A stage's push_to_hub: a folder holding .env, training_args.bin, checkpoints/ and eval_sets.jsonl
    sends its model, tokenizer, card and the card's plot, in one commit, with its lineage in the card."""
    folder = run_dir / "sft"
    seed_secrets(folder)
    server, state = start_hub()
    done = subprocess.run([sys.executable, "-c", FOLDER_PUSH, str(folder)], capture_output=True, text=True,
                          env=hub_env(server, tmp_path), timeout=300)
    server.shutdown()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"URL http://127.0.0.1:{server.server_address[1]}/tester/tiny-sft" in done.stdout
    assert set(state.repos) == {"model:tester/tiny-sft"}
    files = state.repos["model:tester/tiny-sft"]
    assert set(files) == MODEL_FILES | {"plot.png"}
    received = list(files.values()) + list(state.lfs.values())
    assert not any(SECRET.encode() in data for data in received)
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: transformers") and card.count("---\n") == 2 and "# sft card" in card
    meta = parsed_card(files).data
    assert meta.base_model == "tester/tiny-base" and meta.datasets == ["tester/tiny-data"]
    assert (meta.pipeline_tag, meta.license, meta.tags) == ("text-generation", "apache-2.0", ["hfstack", "trl", "sft"])
    assert len(commits(state)) == 1


def test_push_model_folder_is_private_by_default_and_a_dry_run_sends_nothing(run_dir, monkeypatch, capsys):
    import huggingface_hub

    from hfstack.core.config import ConfigError
    from hfstack.core.hub import push_model_folder

    folder = run_dir / "rl"
    seed_secrets(folder)
    calls = []

    class RecordingApi:
        endpoint, logged_in = "http://hub.invalid", True

        def whoami(self):
            calls.append(("whoami",))
            if not RecordingApi.logged_in:
                raise OSError("401 Client Error: Unauthorized")

        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options["private"]))

        def create_commit(self, repo_id, operations, **options):
            calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = push_model_folder(folder, "tester/tiny-rl", dry_run=True, include_eval_sets=True, who="rl")
    listed = parse_listing(capsys.readouterr().out.replace("[rl] ", "[push] "))
    assert calls == [] and url.endswith("/tester/tiny-rl")
    assert set(listed["tester/tiny-rl"]) == MODEL_FILES | {"plot.png", "eval_sets.jsonl"}
    assert push_model_folder(folder, "tester/tiny-rl") == "http://hub.invalid/tester/tiny-rl"
    assert calls == [("whoami",), ("create_repo", "tester/tiny-rl", True),
                     ("create_commit", "tester/tiny-rl", sorted(MODEL_FILES | {"plot.png"}))]
    RecordingApi.logged_in = False
    with pytest.raises(ConfigError, match=r"^rl: cannot use the Hub .*hf auth login"):
        push_model_folder(folder, "tester/tiny-rl", private=False, who="rl")
    assert calls[-1] == ("whoami",)  # nothing created before the login was checked


"""`hfstack push` against a loopback server that speaks the Hub protocol (tests/hub_server.py), with
the real huggingface_hub, transformers and datasets clients: push a run, then load the model with
`from_pretrained` and the datasets with `load_dataset`, and compare with the local files."""

import json
import os
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

    from hfstack.model import build_config, model_dims
    from hfstack.protocol import chat_template
    from hfstack.ranking import RankingStore
    from hfstack.tokenization import to_transformers, train_bpe

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


def test_push_then_load_back_models_and_datasets(run_dir, tmp_path):
    server, state = start_hub()
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_DISABLE_XET": "1",
                        "HF_TOKEN": "hf_dummy", "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    done = subprocess.run([sys.executable, "-c", CLIENT, str(run_dir)], capture_output=True, text=True, env=env,
                          timeout=300)
    server.shutdown()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:] + "\n".join(state.log[-30:])
    result = json.loads(lines[0][len("RESULT "):])
    assert result == {"exit": 0, "weights_equal": True, "sft_differs": True, "chat_template": True,
                      "data_rows_equal": True, "prefs_rows_equal": True}
    card = state.repos["model:tester/tiny"]["README.md"].decode()
    assert "base_model: tester/tiny-rl\n" in card  # lineage: rlhf ← rl ← sft (no base in this run)
    assert "base_model: tester/tiny-sft\n" in state.repos["model:tester/tiny-rl"]["README.md"].decode()
    assert "datasets: [tester/tiny-prefs]" in card and "# report card" in card
    assert card.count("---\n") == 2  # the report card's own metadata was replaced, not stacked
    assert "base_model" not in state.repos["model:tester/tiny-sft"]["README.md"].decode()
    assert "checkpoints" not in " ".join(state.repos["model:tester/tiny"])


def test_push_needs_a_repo_id_and_a_login(tmp_path):
    from hfstack.config import ConfigError
    from hfstack.hub import PushConfig

    with pytest.raises(ConfigError, match="USER/NAME"):
        PushConfig(run=str(tmp_path), repo_id="no-slash")

"""The foreign base model and chat datasets of tests/foreign.py, served by the loopback Hub (tests/hub_server.py),
loaded back with the real clients in one subprocess: AutoTokenizer/AutoModelForCausalLM (default, revision
"main", a commit sha), snapshot_download with allow_patterns, model_info, load_dataset of the parquet and the
ShareGPT JSON-lines datasets (downloaded and streaming), and a missing repo's RepositoryNotFoundError.

    python -m pytest -q tests/unit/test_foreign_hub.py
"""

import hashlib
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

from foreign import (
    BASE_REPO,
    CHAT_A_MARKER,
    CHAT_A_REPO,
    CHAT_A_ROWS,
    CHAT_B_MARKER,
    CHAT_B_REPO,
    CHAT_B_ROWS,
    build_hfstack_like_base,
    loopback_hub,
    padded_vocab,
    publish,
)
from hub_server import git_blob_sha1, start_hub

CLIENT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    import datasets
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = sys.argv[1]
    out = {}
    api = HfApi()
    info = api.model_info("acme/tiny-base")
    out["info"] = {"id": info.id, "sha": info.sha, "files": sorted(s.rfilename for s in info.siblings)}
    tokenizer = AutoTokenizer.from_pretrained("acme/tiny-base")
    vocab = tokenizer.get_vocab()
    out["tokenizer"] = {
        "class": type(tokenizer).__name__, "len": len(tokenizer), "pad": tokenizer.pad_token,
        "bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "specials": sorted(tokenizer.all_special_tokens),
        "in_vocab": {t: t in vocab for t in ("<|endoftext|>", "<|pad|>", "<s>", "</s>", "<|im_start|>",
                                             "<|im_end|>")},
        "chat": tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True),
        "roundtrip": tokenizer.decode(tokenizer.encode("The cat sees a red ball.")),
    }
    models = {"default": AutoModelForCausalLM.from_pretrained("acme/tiny-base"),
              "main": AutoModelForCausalLM.from_pretrained("acme/tiny-base", revision="main"),
              "sha": AutoModelForCausalLM.from_pretrained("acme/tiny-base", revision=sha)}
    AutoTokenizer.from_pretrained("acme/tiny-base", revision=sha)
    states = {name: m.state_dict() for name, m in models.items()}
    model = models["default"]
    out["model"] = {
        "class": type(model).__name__, "vocab_size": model.config.vocab_size,
        "embeddings": model.get_input_embeddings().weight.shape[0], "tied": model.config.tie_word_embeddings,
        "eos": model.generation_config.eos_token_id, "pad": model.config.pad_token_id,
        "same": all(states["default"].keys() == s.keys() and all(torch.equal(states["default"][k], s[k]) for k in s)
                    for s in states.values()),
    }
    folder = snapshot_download("acme/tiny-base", allow_patterns=["*.json", "*.jinja"],
                               cache_dir=os.path.join(os.environ["HF_HOME"], "snapshot"))  # a cache of its own
    out["snapshot"] = {"folder_sha": os.path.basename(folder), "files": {
        name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(folder))}}
    out["datasets"] = {}
    for repo in ("acme/chat-a", "acme/chat-b"):
        data = datasets.load_dataset(repo, split="train")
        stream = list(datasets.load_dataset(repo, split="train", streaming=True))
        out["datasets"][repo] = {"rows": data.num_rows, "columns": data.column_names, "first": data[0],
                                 "streamed": len(stream), "same": stream == data.to_list(),
                                 "text": json.dumps(data.to_list())}
    missing = {}
    for name, call in {"model_info": lambda: api.model_info("acme/missing"),
                       "hf_hub_download": lambda: hf_hub_download("acme/missing", "config.json"),
                       "snapshot_download": lambda: snapshot_download("acme/missing"),
                       "dataset_info": lambda: api.dataset_info("acme/missing"),
                       "revision": lambda: hf_hub_download("acme/tiny-base", "config.json", revision="nope"),
                       "from_pretrained": lambda: AutoModelForCausalLM.from_pretrained("acme/missing"),
                       "load_dataset": lambda: datasets.load_dataset("acme/missing", split="train")}.items():
        try:
            call()
            missing[name] = None
        except Exception as error:  # the error and what it wraps
            chain, cause = [], error
            while cause is not None and len(chain) < 10:
                chain.append(type(cause).__name__)
                cause = cause.__cause__ or cause.__context__
            missing[name] = chain + [(str(error).splitlines() or [""])[0]]
    out["missing"] = missing
    print("RESULT " + json.dumps(out))
""")


def test_foreign_base_and_chat_datasets_load_from_the_loopback_hub(tmp_path):
    with loopback_hub(tmp_path) as (server, state, env):
        sha = state.commits[f"model:{BASE_REPO}"]
        done = subprocess.run([sys.executable, "-c", CLIENT, sha], capture_output=True, text=True, env=env,
                              timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-4000:] + "\n".join(state.log[-40:])
    result = json.loads(lines[0][len("RESULT "):])
    files = state.repos[f"model:{BASE_REPO}"]

    assert result["info"] == {"id": BASE_REPO, "sha": sha, "files": sorted(files)}
    tok = result["tokenizer"]
    assert tok["in_vocab"] == {"<|endoftext|>": False, "<|pad|>": False, "<s>": True, "</s>": True,
                               "<|im_start|>": True, "<|im_end|>": True}
    assert tok["pad"] is None and (tok["bos"], tok["eos"]) == ("<s>", "</s>")
    assert set(tok["specials"]) == {"<s>", "</s>", "<|im_start|>", "<|im_end|>"}
    assert tok["chat"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok["roundtrip"] == "The cat sees a red ball."
    model = result["model"]
    assert model["class"] == "LlamaForCausalLM" and model["same"] and model["tied"]
    assert model["vocab_size"] == model["embeddings"] == padded_vocab(tok["len"]) > tok["len"]
    assert model["vocab_size"] % 64 == 0 and model["eos"] == 1 and model["pad"] is None

    wanted = {name for name in files if name.endswith((".json", ".jinja"))}
    assert result["snapshot"] == {"folder_sha": sha, "files": {
        name: hashlib.sha256(files[name]).hexdigest() for name in sorted(wanted)}}

    chat_a, chat_b = result["datasets"][CHAT_A_REPO], result["datasets"][CHAT_B_REPO]
    assert (chat_a["rows"], chat_a["streamed"], chat_a["columns"]) == (CHAT_A_ROWS, CHAT_A_ROWS, ["messages"])
    assert (chat_b["rows"], chat_b["streamed"], chat_b["columns"]) == (CHAT_B_ROWS, CHAT_B_ROWS, ["conversations"])
    assert chat_a["same"] and chat_b["same"]
    assert [m["role"] for m in chat_a["first"]["messages"]] == ["system", "user", "assistant"]
    assert [t["from"] for t in chat_b["first"]["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert CHAT_A_MARKER in chat_a["text"] and CHAT_B_MARKER not in chat_a["text"]
    assert CHAT_B_MARKER in chat_b["text"] and CHAT_A_MARKER not in chat_b["text"]

    missing = result["missing"]
    for name in ("model_info", "hf_hub_download", "snapshot_download", "dataset_info"):
        assert missing[name][0] == "RepositoryNotFoundError", missing
    assert missing["revision"][0] == "RevisionNotFoundError", missing
    assert missing["from_pretrained"][0] == "OSError" and "RepositoryNotFoundError" in missing["from_pretrained"]
    assert missing["load_dataset"][0] == "DatasetNotFoundError"
    assert "doesn't exist on the Hub" in missing["load_dataset"][-1]


def test_hub_server_answers_ranges_revisions_and_missing_repos(tmp_path):
    """What the clients rely on, asked by hand: byte ranges, a former commit as a revision, the README's metadata
    as cardData, a recursive tree, and the X-Error-Codes huggingface_hub maps to its exceptions."""
    (tmp_path / "v1" / "data").mkdir(parents=True)
    card = "---\nlicense: mit\ntags: [x]\n---\n# card\n"
    (tmp_path / "v1" / "README.md").write_text(card)
    (tmp_path / "v1" / "data" / "train.jsonl").write_text("0123456789")
    server, state = start_hub()
    try:
        first = publish(state, "acme/d", tmp_path / "v1", "dataset")
        (tmp_path / "v1" / "data" / "train.jsonl").write_text("abc")
        second = publish(state, "acme/d", tmp_path / "v1", "dataset")
        base = f"http://127.0.0.1:{server.server_address[1]}"

        def get(path, **headers):
            try:
                with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers)) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), error.read()

        assert first != second and state.commits["dataset:acme/d"] == second
        status, headers, body = get(f"/datasets/acme/d/resolve/{first}/data/train.jsonl", Range="bytes=2-4")
        assert (status, body, headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
        assert headers["X-Repo-Commit"] == first
        status, headers, body = get("/datasets/acme/d/resolve/main/data%2Ftrain.jsonl")
        assert (status, body, headers["X-Repo-Commit"], headers["ETag"]) == (200, b"abc", second,
                                                                             f'"{git_blob_sha1(b"abc")}"')
        assert get("/datasets/acme/d/resolve/main/data/train.jsonl", Range="bytes=-2")[2] == b"bc"
        status, _, body = get(f"/api/datasets/acme/d/revision/{first[:10]}?blobs=true")
        info = json.loads(body)
        assert (status, info["sha"], info["tags"]) == (200, first, ["x"])
        assert info["cardData"] == {"license": "mit", "tags": ["x"]}
        sizes = {s["rfilename"]: s["size"] for s in info["siblings"]}
        assert sizes == {"README.md": len(card), "data/train.jsonl": 10}
        tree = json.loads(get("/api/datasets/acme/d/tree/main?recursive=true")[2])
        assert sorted((e["type"], e["path"]) for e in tree) == [("directory", "data"), ("file", "README.md"),
                                                                 ("file", "data/train.jsonl")]
        assert [e["path"] for e in json.loads(get("/api/datasets/acme/d/tree/main/data")[2])] == ["data/train.jsonl"]
        for path, code in {"/api/models/acme/d": "RepoNotFound", "/acme/nope/resolve/main/config.json": "RepoNotFound",
                           "/api/datasets/acme/d/revision/nope": "RevisionNotFound",
                           "/api/datasets/acme/d/tree/main/nope": "EntryNotFound",
                           "/datasets/acme/d/resolve/main/nope.txt": "EntryNotFound"}.items():
            status, headers, _ = get(path)
            assert (status, headers.get("X-Error-Code")) == (404, code), path
    finally:
        server.shutdown()
        server.server_close()


def test_hfstack_like_base_is_the_contrast(tmp_path):
    """build_hfstack_like_base: hfstack's protocol tokens, a pad token and vocab_size == len(tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = build_hfstack_like_base(tmp_path / "h")
    tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    assert "<|endoftext|>" in tokenizer.get_vocab() and tokenizer.pad_token == "<|pad|>"
    assert config.vocab_size == len(tokenizer)

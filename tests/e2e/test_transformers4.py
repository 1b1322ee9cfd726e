"""A checkpoint saved with hfstack.core.checkpoint (save_tokenizer, set_turn_end, model.save_pretrained)
loads on transformers 4 and gives the same ids, chat render and logits as transformers 5 in this process.

transformers<5 (with the huggingface_hub and tokenizers it needs) is installed once into
~/.cache/hfstack-tests/transformers4/<resolved versions> (HFSTACK_TEST_CACHE moves the root) with
`pip install --no-deps --target`, so torch, safetensors and numpy come from this environment; a
subprocess runs this interpreter with that folder first on PYTHONPATH. Without a package index and
without a cached install the test is skipped.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hfstack.core.checkpoint import save_tokenizer, set_turn_end
from hfstack.core.protocol import END_OF_TURN

pytestmark = pytest.mark.slow

SPECS = ["transformers>=4.46,<5", "huggingface_hub<1", "tokenizers<0.23"]
CACHE = Path(os.environ.get("HFSTACK_TEST_CACHE") or Path.home() / ".cache" / "hfstack-tests") / "transformers4"
TEXT = "The sqlite3 module: 2**10 = 1024, naïve café ünïcode <|assistant_end|> and <|user_start|> as tokens."
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2**10?"},
    {"role": "assistant", "content": "Let me compute it.", "tool_calls": [
        {"type": "function", "function": {"name": "python", "arguments": {"code": "print(2**10)"}}}]},
    {"role": "tool", "name": "python", "content": "1024"},
    {"role": "assistant", "content": "It is 1024."},
    {"role": "user", "content": "Thanks!"},
]
PROBE = """
import json
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def measure(folder, text, chat):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    chat_ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True,
                                             add_generation_prompt=True)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([list(chat_ids)])).logits[0].float()
    return json.loads(json.dumps({
        "version": transformers.__version__, "tokenizer_class": type(tokenizer).__name__,
        "text_ids": tokenizer(text)["input_ids"], "plain_ids": tokenizer(text, add_special_tokens=False)["input_ids"],
        "chat_ids": list(chat_ids), "rendered": tokenizer.apply_chat_template(chat, tokenize=False),
        "special_tokens": sorted(map(str, tokenizer.all_special_tokens)),
        "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "decoded": tokenizer.decode(chat_ids), "eos": model.generation_config.eos_token_id,
        "logits": logits.tolist()}))
"""


def _pip(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def _resolve() -> dict[str, str] | None:
    """The versions pip picks for SPECS now; None when no index answers."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        try:
            result = _pip("install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed", "--report",
                          str(report), *SPECS, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode or not report.is_file():
            return None
        installs = json.loads(report.read_text())["install"]
        return {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}


def transformers4() -> Path:
    """A folder holding transformers<5, its huggingface_hub and tokenizers, keyed by their versions."""
    versions = _resolve()
    if versions is None:  # no index: an earlier install will do
        cached = sorted(p for p in CACHE.glob("transformers-*") if (p / ".complete").is_file())
        if not cached:
            pytest.skip(f"pip cannot reach a package index to install {' '.join(SPECS)}, and none is cached")
        return cached[-1]
    folder = CACHE / "-".join(f"{name}-{version}" for name, version in sorted(versions.items()))
    if (folder / ".complete").is_file():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".installing-"))
    started = time.perf_counter()
    result = _pip("install", "--quiet", "--no-deps", "--target", str(staging),
                  *(f"{name}=={version}" for name, version in versions.items()))
    seconds = time.perf_counter() - started
    if result.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"pip could resolve {versions} but not install them:\n{result.stderr[-2000:]}")
    (staging / ".complete").write_text(json.dumps({"versions": versions, "install_seconds": round(seconds, 1)}))
    print(f"installed {versions} in {seconds:.1f}s into {folder}")
    try:
        staging.rename(folder)
    except OSError:  # another run finished the same install first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def probe(folder: Path, pythonpath: Path) -> dict:
    """PROBE's measurements in a subprocess that imports transformers from `pythonpath` first."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))}
    code = PROBE + "\nimport sys\nprint('PROBE ' + json.dumps(measure(*sys.argv[1:3], json.loads(sys.argv[3]))))"
    result = subprocess.run([sys.executable, "-c", code, str(folder), TEXT, json.dumps(CHAT)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("PROBE "))[6:])


def test_checkpoint_loads_the_same_on_transformers4(tiny_sft_model, tmp_path):
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    site = transformers4()
    tokenizer = AutoTokenizer.from_pretrained(tiny_sft_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_sft_model)
    set_turn_end(model, tokenizer)
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, tmp_path)

    old = probe(tmp_path, site)
    here: dict = {}
    exec(PROBE, here)  # the same measurements with this process's transformers 5
    new = here["measure"](str(tmp_path), TEXT, CHAT)
    assert old["version"].startswith("4.") and new["version"].startswith("5.")
    assert old["tokenizer_class"] == "PreTrainedTokenizerFast"
    for key in ("text_ids", "plain_ids", "chat_ids", "rendered", "special_tokens", "special_ids", "decoded", "eos"):
        assert old[key] == new[key], key
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN) in np.atleast_1d(old["eos"])
    assert "<|assistant_end|>" in old["special_tokens"] and old["rendered"].count("<|assistant_start|>") == 1
    np.testing.assert_allclose(np.array(old["logits"]), np.array(new["logits"]), atol=1e-5, rtol=0)

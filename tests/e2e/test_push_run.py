"""`tunebook push` of really trained runs (the `fact_runs` fixture: facts-a, trained, evaluated and merged) to the
loopback Hub server (tests/hubserver.py) through the real CLI and huggingface_hub, then downloaded back with
huggingface_hub: the files are byte for byte what was shipped, the model card is there, the pushed adapter loads
with peft on its base and answers a held-out fact; a wrong token fails with its message and exit code; the token
is in no output, log, request (outside its Authorization header) or pushed file."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship.export import package
from tests.conftest import run_cli
from tests.hubserver import HubServer, point_huggingface_hub

pytestmark = pytest.mark.e2e
TOKEN = "hf_e2ePushWriteToken0123456789abcdef"
OUTPUTS: list[str] = []  # every stdout/stderr of this file's pushes, checked for the token at the end


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("push-hub")) as server:
        server.add_token(TOKEN, "alice")
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("push-hf-home")  # no token file, an empty cache


def push(fact_runs, hub, hf_home, *args, token=TOKEN):
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0", "HF_TOKEN": token}
    r = run_cli("push", *args, cwd=fact_runs.root, env=env, timeout=600)
    OUTPUTS.extend([r.stdout, r.stderr])
    return r


def digest(data: bytes | Path) -> str:
    if isinstance(data, Path):
        h = hashlib.sha256()
        with open(data, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return hashlib.sha256(data).hexdigest()


def shipped(fact_runs, fmt) -> dict[str, str]:
    """sha256 of each file export packs for the run (what the push must have uploaded)."""
    pkg = package(resolve(load_recipe("facts-a", fact_runs.root), template_check=False), fmt)
    return {path: digest(x) for path, x in pkg.items()}


def download(hub, hf_home, monkeypatch, repo_id) -> Path:
    from huggingface_hub import snapshot_download

    point_huggingface_hub(monkeypatch, hub.url, hf_home)
    return Path(snapshot_download(repo_id, token=TOKEN))


def downloaded(snap: Path) -> dict[str, str]:
    return {p.relative_to(snap).as_posix(): digest(p.resolve()) for p in snap.rglob("*") if p.is_file()}


def test_push_adapter_downloads_back_and_answers_a_held_out_fact(fact_runs, hub, hf_home, monkeypatch, smollm2):
    r = push(fact_runs, hub, hf_home, "facts-a", "--to", "alice/facts-a")
    assert r.returncode == 0, r.stderr[-3000:]
    head = hub.commits("alice/facts-a")[0]["id"]
    assert r.stdout.splitlines()[-1] == f"commit {head}: {hub.url}/alice/facts-a/commit/{head}"
    assert re.fullmatch(rf"pushed 10 files \([\d.]+ MB\) to {re.escape(hub.url)}/alice/facts-a",
                        r.stdout.splitlines()[0])

    snap = download(hub, hf_home, monkeypatch, "alice/facts-a")
    got = downloaded(snap)
    assert got.pop(".gitattributes")
    assert got == shipped(fact_runs, "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml", "tunebook.lock",
            "manifest.json"} <= set(got)
    card = (snap / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "# facts-a (LoRA adapter)" in card

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(snap)  # the trained chat template travelled with the adapter
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2), snap).eval()
    row = fact_runs.held_out("facts-a")[0]
    enc = tok.apply_chat_template([{"role": "user", "content": row["instruction"]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    reply = tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert re.search(row["key_fact"], reply, re.I), reply


def test_push_merged_replaces_the_adapter(fact_runs, hub, hf_home, monkeypatch):
    r = push(fact_runs, hub, hf_home, "facts-a", "--to", "alice/facts-a", "--format", "merged")
    assert r.returncode == 0, r.stderr[-3000:]
    got = downloaded(download(hub, hf_home, monkeypatch, "alice/facts-a"))
    assert got.pop(".gitattributes")
    assert got == shipped(fact_runs, "merged")  # the adapter's files are gone: one model per repo
    assert "adapter_config.json" not in got and "model.safetensors" in got
    assert [c["title"] for c in hub.commits("alice/facts-a")] == [
        "tunebook push facts-a (merged)", "tunebook push facts-a (adapter)", "initial commit"]


def test_wrong_token_fails_with_the_fix(fact_runs, hub, hf_home):
    wrong = "hf_e2eWrongToken0123456789abcdefgh"
    r = push(fact_runs, hub, hf_home, "facts-a", "--to", "alice/facts-a-2", token=wrong)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: the Hub at {hub.url} refused the token while pushing to alice/facts-a-2 "
                          "(HTTP 401: Invalid credentials in Authorization header).")
    assert "HF_TOKEN" in err and "hf auth login" in err and "Traceback" not in r.stderr
    assert wrong not in r.stdout + r.stderr
    assert hub.repo("alice/facts-a-2") is None


def test_the_token_is_nowhere_but_the_authorization_header(fact_runs, hub):
    assert len(OUTPUTS) >= 6  # the pushes above ran
    assert not [o for o in OUTPUTS if TOKEN in o]
    assert hub.leaks == []  # no request line, other header or body (uploads included) carried it
    assert any(e.auth == "valid" for e in hub.requests)  # ... while it did authenticate the pushes
    assert TOKEN not in (hub.root / "requests.jsonl").read_text()
    for repo in ("alice/facts-a",):
        for rev in ("main", hub.commits(repo)[1]["id"]):
            for path, data in hub.read_files(repo, rev).items():
                assert TOKEN.encode() not in data, path
    for p in fact_runs.run("facts-a").rglob("*"):  # nothing of the run (logs, lock, manifest) holds it
        if p.is_file() and p.stat().st_size < 50 * 2**20:
            assert TOKEN.encode() not in p.read_bytes(), p

"""The loopback Hub server (tests/hubserver.py) against the real clients: huggingface_hub downloads and uploads,
and transformers' from_pretrained of a hub id, with HF_ENDPOINT pointed at it and nothing from the internet."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import httpx
import pytest

from tests.hubserver import HubServer, point_huggingface_hub

SMOL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKEN = "hf_serverUNITtoken0123456789abcd"
CAROL = "hf_serverCAROLtoken0123456789abc"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer(tmp_path / "hub") as server:
        server.add_token(TOKEN, "alice")
        server.add_token(CAROL, "carol")
        point_huggingface_hub(monkeypatch, server.url, tmp_path / "hf-home")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_snapshot_download_and_from_pretrained_of_a_hub_id(hub, smollm2, tmp_path):
    """In this process, with huggingface_hub pointed at the server as HF_ENDPOINT would (tests/e2e/test_hub_model.py
    sets the variables themselves, for `make train` of a hub id)."""
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub.serve_folder(SMOL_ID, smollm2)
    snap = snapshot_download(SMOL_ID)
    assert snap.startswith(str(tmp_path / "hf-home" / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"))
    for f in smollm2.iterdir():  # the same bytes, so the same weights and tokenizer
        assert sha256(os.path.join(snap, f.name)) == sha256(f), f.name
    model = AutoModelForCausalLM.from_pretrained(SMOL_ID)
    tok = AutoTokenizer.from_pretrained(SMOL_ID)
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() > 100e6
    assert tok.eos_token == "<|im_end|>"
    # the weights came the way the Hub sends them: a redirect to the blob store, then one GET of the blob
    # (from_pretrained found them in the cache)
    weights = [e for e in hub.requests if e.path.endswith("/model.safetensors")]
    assert weights and {e.status for e in weights} == {302}
    assert len([e for e in hub.requests if e.path.startswith("/lfs-objects/")]) == 1
    assert hub.leaks == []


def test_errors_are_the_ones_huggingface_hub_maps(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    hub.serve_folder("alice/gated", model, gated=True, granted=["carol"])
    hub.serve_folder("alice/secret", model, private=True)
    hub.serve_folder("alice/open", model)
    api = HfApi(endpoint=hub.url)
    dl = dict(endpoint=hub.url, cache_dir=str(tmp_path / "cache"))

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/missing", **dl)
    with pytest.raises(GatedRepoError) as exc:
        hf_hub_download("alice/gated", "config.json", **dl)
    assert exc.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as exc:
        hf_hub_download("alice/gated", "config.json", token=_other_user_token(hub), **dl)
    assert exc.value.response.status_code == 403
    assert hf_hub_download("alice/gated", "config.json", token=CAROL, **dl)  # granted
    assert api.model_info("alice/gated").gated == "auto"  # the page is public, the files are not
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/secret", token=CAROL)
    assert api.model_info("alice/secret", token=TOKEN).private is True
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/open", "nope.json", **dl)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/open", "config.json", revision="no-such-branch", **dl)
    with pytest.raises(HfHubHTTPError) as exc:
        api.model_info("alice/open", token="hf_unknown")
    assert exc.value.response.status_code == 401
    assert exc.value.server_message == "Invalid credentials in Authorization header"


def _other_user_token(hub) -> str:
    """A valid token of a user the gated repo was not granted to."""
    hub.add_token("hf_daveTOKEN0123456789abcdefgh", "dave")
    return "hf_daveTOKEN0123456789abcdefgh"


def test_upload_then_download_round_trip(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("alice/up")
    assert url == f"{hub.url}/alice/up"
    assert api.create_repo("alice/up", exist_ok=True) == url
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "notes.txt").write_text("hello\n")
    (src / "sub" / "big.dat").write_bytes(os.urandom(11 * 1024 * 1024))  # over 10 MB: LFS by size
    (src / "w.safetensors").write_bytes(b"\x00" * 1000)                  # LFS by name
    info = api.upload_folder(repo_id="alice/up", folder_path=src, commit_message="first")
    stored = hub.repo("alice/up").files(info.oid)
    assert {p: e["lfs"] for p, e in stored.items()} == {".gitattributes": False, "notes.txt": False,
                                                       "sub/big.dat": True, "w.safetensors": True}
    assert sorted(api.list_repo_files("alice/up")) == [".gitattributes", "notes.txt", "sub/big.dat", "w.safetensors"]
    tree = {f.path: f for f in api.list_repo_tree("alice/up", recursive=True)}
    assert tree["sub/big.dat"].lfs.sha256 == sha256(src / "sub" / "big.dat") and "sub" in tree
    snap = snapshot_download("alice/up", endpoint=hub.url, cache_dir=str(tmp_path / "cache"))
    for rel in ("notes.txt", "sub/big.dat", "w.safetensors"):
        assert sha256(os.path.join(snap, rel)) == sha256(src / rel)

    # a second commit on a branch; main keeps the first
    api.create_branch("alice/up", branch="dev")
    api.upload_file(path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id="alice/up", revision="dev")
    assert open(hf_hub_download("alice/up", "notes.txt", revision="dev", endpoint=hub.url,
                                cache_dir=str(tmp_path / "c2"))).read() == "v2\n"
    assert hub.read_files("alice/up", "main")["notes.txt"] == b"hello\n"

    # Range (resume) on a regular file
    r = httpx.get(f"{hub.url}/alice/up/resolve/main/notes.txt", headers={"Range": "bytes=2-"})
    assert r.status_code == 206 and r.content == b"llo\n" and r.headers["Content-Range"] == "bytes 2-5/6"


def test_commit_refusals(hub):
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=TOKEN).create_repo("alice/c")
    head = hub.repo("alice/c").refs()["main"]
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}

    def commit(*ops, parent=None):
        header = {"key": "header", "value": {"summary": "s", **({"parentCommit": parent} if parent else {})}}
        body = "\n".join(json.dumps(x) for x in (header, *ops))
        return httpx.post(f"{hub.url}/api/models/alice/c/commit/main", headers=auth, content=body)

    r = commit({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 1}})
    assert r.status_code == 422 and "was not uploaded" in r.json()["error"]
    assert commit(parent="f" * 40).status_code == 412
    ok = commit({"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"a").decode(),
                                          "encoding": "base64"}}, parent=head)
    assert ok.status_code == 200 and hub.repo("alice/c").refs()["main"] == ok.json()["commitOid"]
    r = httpx.post(f"{hub.url}/api/models/alice/c/commit/main", headers={"Content-Type": "application/x-ndjson"},
                   content=json.dumps({"key": "header", "value": {"summary": "s"}}))
    assert r.status_code == 401  # no token, no write
    r = httpx.put(f"{hub.url}/lfs-upload/not-issued", content=b"x")
    assert r.status_code == 403


def test_leak_detector_sees_a_token_outside_the_authorization_header(hub):
    httpx.get(f"{hub.url}/api/models/alice/x", headers={"Authorization": f"Bearer {TOKEN}"})
    assert hub.leaks == []  # where it belongs
    httpx.get(f"{hub.url}/api/models/alice/x", params={"token": TOKEN})
    httpx.get(f"{hub.url}/api/whoami-v2", headers={"X-Debug": f"token={TOKEN}"})
    httpx.post(f"{hub.url}/api/validate-yaml", json={"content": f"---\nsecret: {TOKEN}\n---\n"})
    assert [leak.split(" (")[1] for leak in hub.leaks] == ["request line): token of alice",
                                                          "header X-Debug): token of alice",
                                                          "body): token of alice"]

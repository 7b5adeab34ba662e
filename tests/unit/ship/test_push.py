"""`tunebook push`: argument checks, refusals and the Hub's refusals, on a fabricated run folder (hand-written
adapter and merged files: bookkeeping only, nothing trained), pushed through the real huggingface_hub client to
the loopback Hub server (tests/hubserver.py). The push of real trained adapters, downloaded back and loaded with
peft, is tests/e2e/test_push_run.py."""
from __future__ import annotations

import json
import socket

import pytest

from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship.export import package
from tests.unit.ship.conftest import faq_project
from tests.hubserver import HubServer, point_huggingface_hub

TOKEN = "hf_unitWRITEtoken0123456789abcdef"
READ_TOKEN = "hf_unitREADtoken0123456789abcdef"
BOB_TOKEN = "hf_unitBOBtoken0123456789abcdefgh"

@pytest.fixture
def root(tmp_path):
    files = {
        "sft/output/adapter_config.json": '{"r": 8, "peft_type": "LORA"}',
        "sft/output/adapter_model.safetensors": b"\x00adapter-weights" * 64,
        "sft/output/README.md": "peft's own card", "sft/output/debug.log": "noise",
        "sft/output/checkpoint-2/adapter_model.safetensors": "old",
        "merge/merged/config.json": '{"model_type": "llama"}', "merge/merged/model.safetensors": b"\x00merged" * 99,
        "merge/merged/tokenizer.json": "{}",
        "eval/metrics.json": json.dumps({"contains": 1.0, "f1": 0.9}),
        "tunebook.lock": json.dumps({"version": 1, "stages": {"sft": {"finished": "2026-11-23T10:00:00+00:00"}}}),
        "manifest.json": json.dumps({"recipe": "faq", "versions": {"tunebook": "0.1.0"}})}
    return faq_project(tmp_path / "proj", files)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub with alice (write), alice's read-only token and bob; this process's huggingface_hub
    pointed at it with alice's write token in HF_TOKEN."""
    with HubServer(tmp_path / "hub") as server:
        server.add_token(TOKEN, "alice")
        server.add_token(READ_TOKEN, "alice", role="read")
        server.add_token(BOB_TOKEN, "bob")
        point_huggingface_hub(monkeypatch, server.url, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def shipped(root, fmt):
    """{path in repo: bytes} of what export packs for `fmt` (the files a push must upload)."""
    pkg = package(resolve(load_recipe("faq", root), template_check=False), fmt)
    return {p: x if isinstance(x, bytes) else x.read_bytes() for p, x in pkg.items()}


def no_token_anywhere(hub, *texts):
    assert hub.leaks == []
    for text in texts:
        assert TOKEN not in text and READ_TOKEN not in text
    for repo in (hub.root / "repos").glob("*/*"):
        for data in hub.read_files(f"{repo.parent.name}/{repo.name}").values():
            assert TOKEN.encode() not in data
    assert TOKEN not in (hub.root / "requests.jsonl").read_text()


def test_push_adapter_uploads_what_export_packs(root, hub, cli):
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 0, r.stderr
    files = hub.read_files("alice/faq")
    assert files.pop(".gitattributes")  # the Hub's own, from the repo's first commit
    assert files == shipped(root, "adapter")
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json",
                             "recipe.yaml", "tunebook.lock"]  # no checkpoint, log, or the trainer's README
    assert "library_name: peft" in files["README.md"].decode()
    head = hub.commits("alice/faq")[0]
    assert head["title"] == "tunebook push faq (adapter)" and head["author"] == "alice"
    assert head["files"]["adapter_model.safetensors"]["lfs"]  # went through the LFS batch API and a PUT
    assert [e.method for e in hub.requests if e.path.startswith("/lfs-upload/")] == ["PUT"]
    assert r.stdout.splitlines() == [f"pushed 6 files ({sum(map(len, files.values())) / 1e6:.1f} MB) to "
                                     f"{hub.url}/alice/faq",
                                     f"commit {head['id']}: {hub.url}/alice/faq/commit/{head['id']}"]
    assert not hub.repo("alice/faq").meta["private"]
    no_token_anywhere(hub, r.stdout, r.stderr)


def test_push_again_is_a_no_op_and_merged_replaces_the_adapter(root, hub, cli):
    assert cli("--root", str(root), "push", "faq", "--to", "alice/faq").returncode == 0
    first = hub.commits("alice/faq")[0]["id"]
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 0 and f"commit {first}" in r.stdout  # nothing changed: no new commit
    assert len(hub.commits("alice/faq")) == 2
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq", "--format", "merged")
    assert r.returncode == 0, r.stderr
    files = hub.read_files("alice/faq")
    files.pop(".gitattributes")
    assert files == shipped(root, "merged")  # the adapter's files were deleted in the same commit
    assert "adapter_config.json" not in files and "library_name: transformers" in files["README.md"].decode()
    assert len(hub.commits("alice/faq")) == 3


def test_private_repo_and_branch(root, hub, cli):
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq-private", "--private", "--revision", "v1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith(f"{hub.url}/alice/faq-private/tree/v1 (private)")
    repo = hub.repo("alice/faq-private")
    assert repo.meta["private"] and set(repo.refs()) == {"main", "v1"}
    assert sorted(hub.read_files("alice/faq-private", "main")) == [".gitattributes"]  # main untouched
    assert "adapter_model.safetensors" in hub.read_files("alice/faq-private", "v1")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):  # hidden from others
        HfApi(endpoint=hub.url).model_info("alice/faq-private", token=BOB_TOKEN)


@pytest.mark.parametrize("repo_id", ["faq", "alice/faq/x", "alice/", "al--ice/faq", "alice/fa q", "-alice/faq"])
def test_bad_repo_id_refused_before_any_request(root, hub, cli, repo_id):
    r = cli("--root", str(root), "push", "faq", f"--to={repo_id}")
    assert r.returncode == 2 and "is not a Hub model repo id" in r.stderr and "namespace/name" in r.stderr
    assert hub.requests == []


def test_missing_token_refused(root, hub, cli, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no Hugging Face token" in r.stderr and "HF_TOKEN" in r.stderr and "hf auth login" in r.stderr
    assert hub.requests == []


def test_token_from_hf_auth_login_file(root, hub, cli, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(TOKEN)  # where `hf auth login` stores it
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 0, r.stderr
    no_token_anywhere(hub, r.stdout, r.stderr)


def test_failed_gate_and_missing_run_refused(root, hub, cli):
    lock = root / "runs/faq/tunebook.lock"
    good = lock.read_text()
    lock.write_text(json.dumps({"stages": {"eval": {"gate": "failed",
                                                    "failed_gates": ["held-out contains = 0.2, needs >= 0.8"]}}}))
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 2 and "refusing to push faq" in r.stderr and "contains = 0.2" in r.stderr
    lock.write_text(good)
    (root / "runs/faq/sft/output/adapter_config.json").unlink()
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 2 and "no trained adapter" in r.stderr and "make train RECIPE=faq" in r.stderr
    assert hub.requests == []


def test_offline_refused(root, hub, cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr
    assert hub.requests == []


def test_invalid_token(root, hub, cli, monkeypatch):
    wrong = "hf_NOTaREALtoken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", wrong)
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: the Hub at {hub.url} refused the token while pushing to alice/faq (HTTP 401")
    assert "HF_TOKEN" in err and "hf auth login" in err and "Traceback" not in r.stderr
    assert wrong not in r.stdout + r.stderr
    assert hub.repo("alice/faq") is None


@pytest.mark.parametrize("token, repo_id, said", [
    (READ_TOKEN, "alice/faq", "requires a token with write access"),
    (TOKEN, "bob/faq", "rights to write to the namespace 'bob'"),
])
def test_no_write_access(root, hub, cli, monkeypatch, token, repo_id, said):
    monkeypatch.setenv("HF_TOKEN", token)
    r = cli("--root", str(root), "push", "faq", "--to", repo_id)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert f"error: the token may not write to {repo_id} (HTTP 403: " in err and said in err
    assert f"write access to the namespace '{repo_id.split('/')[0]}'" in err
    no_token_anywhere(hub, r.stdout, r.stderr)


def test_someone_elses_existing_repo(root, hub, cli, monkeypatch):
    hub.create_repo("bob/shared")
    r = cli("--root", str(root), "push", "faq", "--to", "bob/shared")
    assert r.returncode == 2 and "the token may not write to bob/shared (HTTP 403" in r.stderr
    assert sorted(hub.read_files("bob/shared")) == [".gitattributes"]


def test_hub_unreachable(root, hub, cli, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    r = cli("--root", str(root), "push", "faq", "--to", "alice/faq")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot reach the Hub at {dead} to push alice/faq: ConnectError")
    assert "HF_ENDPOINT" in err

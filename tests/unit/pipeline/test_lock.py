"""The lock file (runs/<recipe>/tunebook.lock), through `tunebook train` / `status` on the stand-in Axolotl: what
it records per stage, that an unchanged re-run changes nothing, and when a recorded stage stops counting (moved
project: still valid; unreadable lock, other package versions: not)."""
from __future__ import annotations

import json

from tests.fakes.pipeline_project import CHAIN, lock, states, status, tb, train, trained_stages


def test_first_run_writes_the_lock_and_an_unchanged_rerun_does_nothing(proj, standin):
    root = proj(CHAIN)
    r = train(root)
    assert "sft: adapter at runs/r/sft/output" in r.stdout and "merge: merged model at runs/r/merge/merged" in r.stdout
    assert trained_stages(standin) == ["sft", "dpo"] and len(standin.calls("merge-lora")) == 2  # sft for dpo, merge
    lk = lock(root)
    assert set(lk["stages"]) == {"sft", "dpo", "merge"}
    assert [lk["stages"][s]["kind"] for s in ("sft", "dpo", "merge")] == ["sft", "dpo", "merge"]
    assert lk["stages"]["dpo"]["inputs"]["upstream"] == {"sft": lk["stages"]["sft"]["output_hash"]}
    assert lk["stages"]["merge"]["inputs"]["upstream"] == {"dpo": lk["stages"]["dpo"]["output_hash"]}
    assert lk["stages"]["merge"]["outputs"] == {"merged": "merge/merged"}
    assert "dpo:data/prefs.jsonl" in lk["stages"]["dpo"]["inputs"]["data"]
    assert lk["stages"]["sft"]["inputs"]["versions"]["axolotl"] == "0.19.0"
    before = (root / "runs/r/tunebook.lock").read_text()

    r = train(root)
    assert "nothing to do: every stage of r is up to date" in r.stderr
    for s in ("sft", "dpo", "merge"):
        assert f"{s}: up to date (inputs unchanged since {lk['stages'][s]['finished']})" in r.stderr
    assert len(standin.calls()) == 4, "an up-to-date rerun must not call Axolotl"
    assert (root / "runs/r/tunebook.lock").read_text() == before
    assert states(root) == {"sft": "done", "dpo": "done", "merge": "done"}


def test_a_moved_project_is_still_up_to_date(proj, standin, tmp_path):
    root = proj(CHAIN)
    train(root)
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    r = train(moved)
    assert "nothing to do" in r.stderr and len(standin.calls("train")) == 2


def test_an_unreadable_lock_is_an_error_and_moved_aside_reruns_everything(proj, standin):
    root = proj(CHAIN)
    train(root)
    path = root / "runs/r/tunebook.lock"
    path.write_text("{ not json")
    for cmd in ("status", "train"):
        r = tb(root, cmd, "r")
        assert r.returncode == 2 and "the lock file is damaged" in r.stderr and str(path) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert path.read_text() == "{ not json", "a damaged lock is never rewritten"
    path.rename(path.with_name("tunebook.lock.damaged"))
    assert states(root) == {"sft": "not run", "dpo": "not run", "merge": "not run"}
    train(root)
    assert trained_stages(standin) == ["sft", "dpo", "sft", "dpo"]
    assert set(lock(root)["stages"]) == {"sft", "dpo", "merge"}


def test_a_newer_package_version_makes_a_stage_stale(proj, standin):
    root = proj(CHAIN)
    train(root)
    lk = lock(root)
    now = lk["stages"]["sft"]["inputs"]["versions"]["transformers"]
    lk["stages"]["sft"]["inputs"]["versions"]["transformers"] = "0.0.1"
    lk["stages"]["sft"]["input_hash"] = "recorded-by-an-older-install"
    (root / "runs/r/tunebook.lock").write_text(json.dumps(lk))
    st = status(root)
    assert st["sft"] == ("stale", f"transformers 0.0.1 -> {now}")
    assert st["dpo"] == ("stale", "upstream stage sft will re-run")

"""One staleness decision for `train` and `status` (runner.pipeline.decide), on hand-made lock entries."""
from __future__ import annotations

from runner.fsutil import sha256_file
from runner.pipeline import decide as dc
from runner.pipeline.lock import StageInputs
from runner.recipe.resolve import ResolvedStage


def _stage(tmp_path, name="eval", kind="eval", upstream="sft") -> ResolvedStage:
    return ResolvedStage(name, kind, 1, None, {}, tmp_path / name, "main", upstream)


def _inputs(data="d1") -> StageInputs:
    return StageInputs(config={"k": 1}, data={"main:train": data}, upstream={"sft": "u1"}, versions={"x": "1"})


def _entry(inputs: StageInputs, **kw) -> dict:
    return {"kind": "eval", "input_hash": inputs.hash, "inputs": inputs.to_dict(), "finished": "T1", **kw}


def _finished(st: ResolvedStage) -> str:
    st.paths.dir.mkdir(parents=True, exist_ok=True)
    st.paths.metrics.write_text("{}")
    return sha256_file(st.paths.metrics)


def test_up_to_date_when_inputs_and_outputs_match(tmp_path):
    st, inp = _stage(tmp_path), _inputs()
    d = dc.decide(st, _entry(inp, output_hash=_finished(st)), inp)
    assert not d.runs and d.status() == ("done", "T1")
    assert d.note() == "eval: up to date (inputs unchanged since T1)"


def test_never_run_runs_silently(tmp_path):
    d = dc.decide(_stage(tmp_path), None, _inputs())
    assert d.runs and d.why == dc.NOT_RUN and d.status() == ("not run", "") and d.note() is None


def test_changed_inputs_say_which(tmp_path):
    st = _stage(tmp_path)
    entry = _entry(_inputs("d1"), output_hash=_finished(st))
    d = dc.decide(st, entry, _inputs("d2"))
    assert d.why == dc.INPUTS_CHANGED and d.status() == ("stale", "data main:train changed")
    assert d.note() == "eval: re-running because data main:train changed"
    assert dc.decide(st, entry, _inputs("d2"), forced=True).note() is None


def test_missing_outputs_make_a_stage_stale(tmp_path):
    st, inp = _stage(tmp_path), _inputs()
    d = dc.decide(st, _entry(inp, output_hash="gone"), inp)
    assert d.why == dc.OUTPUTS and d.status() == ("stale", "its outputs are missing or were modified")


def test_a_failed_gate_is_never_skipped(tmp_path):
    st, inp = _stage(tmp_path), _inputs()
    entry = _entry(inp, gate="failed", failed_gates=["held-out f1 = 0.100, needs >= 0.5"])
    d = dc.decide(st, entry, inp)
    assert d.runs and d.status() == ("gate failed", "held-out f1 = 0.100, needs >= 0.5")
    assert d.note() == "eval: re-evaluating: its gate failed last time"
    assert dc.decide(st, entry, inp, forced=True).note() == "eval: re-evaluating: its gate failed last time"
    assert dc.decide(st, {**entry, "failed_gates": []}, inp).status() == ("gate failed", "an evaluation gate failed")


def test_forced_and_upstream_reruns(tmp_path):
    st, inp = _stage(tmp_path), _inputs()
    entry = _entry(inp, output_hash=_finished(st))
    assert dc.decide(st, entry, inp, forced=True).why == dc.FORCED
    d = dc.decide(st, entry, inp, upstream_rerun="sft")
    assert d.status() == ("stale", "upstream stage sft will re-run")
    # A stage that starts from nothing before it is judged on its own.
    assert not dc.decide(_stage(tmp_path, upstream=None), entry, inp, upstream_rerun="sft").runs

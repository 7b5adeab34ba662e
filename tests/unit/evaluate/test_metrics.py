"""Held-out metrics against values computed by hand."""
from __future__ import annotations

import json

import pytest

from runner.evaluate import metrics as mx


def test_normalize_lowercases_drops_punctuation_articles_and_extra_space():
    assert mx.normalize("  The Cat, sat on   a MAT! ") == "cat sat on mat"
    assert mx.normalize("An apple; the end.") == "apple end"
    # Articles only as whole words: "theory" and "another" keep their letters.
    assert mx.normalize("Theory of another") == "theory of another"
    # Punctuation becomes a space, so "27-day" and "27 day" agree.
    assert mx.normalize("27-day") == "27 day"
    assert mx.normalize("") == "" and mx.normalize(None) == ""


def test_exact_match_after_normalisation():
    assert mx.exact_match("The answer is 27 days.", "answer is 27 days") == 1.0
    assert mx.exact_match("27 days", "27 days per year") == 0.0
    assert mx.exact_match("", "") == 1.0


def test_token_f1_hand_computed():
    # pred tokens: [you, get, 27, days]; ref: [employees, get, 27, days, of, leave]
    # common = 3 (get, 27, days); P = 3/4, R = 3/6 -> F1 = 2*0.75*0.5/1.25 = 0.6
    assert mx.token_f1("You get 27 days.", "Employees get 27 days of leave") == pytest.approx(0.6)
    # Repeated tokens count at most as often as on the other side:
    # pred [x, x, x], ref [x, y]: common 1, P = 1/3, R = 1/2 -> F1 = 0.4
    assert mx.token_f1("x x x", "x y") == pytest.approx(0.4)
    assert mx.token_f1("nothing shared", "other words") == 0.0
    assert mx.token_f1("", "something") == 0.0
    assert mx.token_f1("", "") == 1.0
    assert mx.token_f1("The same.", "same") == 1.0


def test_lcs_length():
    assert mx.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # classic example: BCBA
    assert mx.lcs_length([], ["a"]) == 0
    assert mx.lcs_length(["a", "b"], ["a", "b"]) == 2


def test_rouge_l_hand_computed():
    # pred: [police, killed, gunman] ; ref: [police, kill, gunman]  (articles "the" dropped)
    # LCS = [police, gunman] = 2; P = 2/3, R = 2/3 -> F1 = 2/3
    assert mx.rouge_l("The police killed the gunman", "the police kill the gunman") == pytest.approx(2 / 3)
    # pred: [you, get, 12, sick, days]; ref: [employees, get, 12, paid, sick, days, per, year]
    # LCS = [get, 12, sick, days] = 4; P = 4/5, R = 4/8 -> F1 = 2*0.8*0.5/1.3 = 0.615384...
    assert mx.rouge_l("You get 12 sick days.", "Employees get 12 paid sick days per year.") == pytest.approx(8 / 13)
    # Order matters for ROUGE-L (unlike F1): reversed tokens share an LCS of 1.
    # pred [z, y, x] vs ref [x, y, z]: LCS 1, P = R = 1/3 -> F1 = 1/3
    assert mx.rouge_l("z y x", "x y z") == pytest.approx(1 / 3)
    assert mx.token_f1("z y x", "x y z") == 1.0
    assert mx.rouge_l("", "x") == 0.0


def test_contains_uses_key_fact_regex_case_insensitively():
    key = r"\b(27|twenty[- ]seven)\b"
    assert mx.contains("You get Twenty-Seven days.", "ref", key) == 1.0
    assert mx.contains("You get 270 days.", "ref", key) == 0.0
    assert mx.contains("27 days", "ref", key) == 1.0


def test_a_backtracking_key_fact_regex_is_stopped_with_the_pattern_named(monkeypatch):
    """(a|a)+$ on 'aaaa...!' backtracks exponentially: without a time limit one answer hangs the eval stage."""
    monkeypatch.setattr(mx, "KEY_FACT_SECONDS", 0.2)
    with pytest.raises(mx.KeyFactTimeout, match=r"\(a\|a\)\+\$.*over 0.2 s on one answer of 41 characters.*plain"):
        mx.contains("a" * 40 + "!", "ref", "(a|a)+$")
    assert mx.contains("aaa", "ref", "(a|a)+$") == 1.0  # the same pattern on a matching answer is fine


def test_contains_without_key_fact_looks_for_the_normalised_reference():
    assert mx.contains("I think the answer is Paris, France.", "Paris") == 1.0
    assert mx.contains("Parisian food", "Paris") == 0.0  # whole words only
    assert mx.contains("anything", "") == 0.0


def test_json_valid():
    assert mx.json_valid('{"a": 1}') == 1.0
    assert mx.json_valid('  [1, 2]  ') == 1.0
    assert mx.json_valid('```json\n{"a": 1}\n```') == 1.0  # one fence around the whole answer is allowed
    assert mx.json_valid('{"a": 1') == 0.0
    assert mx.json_valid("Sure! {\"a\": 1}") == 0.0
    assert mx.json_valid("") == 0.0


def test_json_schema_conformance():
    schema = {"type": "object", "required": ["name", "days"], "additionalProperties": False,
              "properties": {"name": {"type": "string"}, "days": {"type": "integer", "minimum": 0}}}
    v = mx.schema_validator(schema)
    assert mx.json_schema('{"name": "leave", "days": 27}', v) == 1.0
    assert mx.json_schema('{"name": "leave", "days": -1}', v) == 0.0      # minimum
    assert mx.json_schema('{"name": "leave"}', v) == 0.0                  # required
    assert mx.json_schema('{"name": "leave", "days": 2, "x": 1}', v) == 0.0  # additionalProperties
    assert mx.json_schema('{"name": "leave", "days": "27"}', v) == 0.0    # type
    assert mx.json_schema("not json", v) == 0.0


def test_invalid_schema_is_refused():
    from jsonschema.exceptions import SchemaError

    with pytest.raises(SchemaError):
        mx.schema_validator({"type": "no-such-type"})


def test_score_and_aggregate():
    rows = [
        mx.score("You get 27 days.", "You get 27 days", ["exact_match", "f1", "contains"], r"\b27\b"),
        mx.score("No idea.", "You get 27 days", ["exact_match", "f1", "contains"], r"\b27\b"),
    ]
    assert rows[0] == {"exact_match": 1.0, "f1": 1.0, "contains": 1.0}
    assert rows[1] == {"exact_match": 0.0, "f1": 0.0, "contains": 0.0}
    rows[0]["stops"], rows[1]["stops"] = 1.0, 0.0
    agg = mx.aggregate(rows)
    assert agg == {"exact_match": 0.5, "f1": 0.5, "contains": 0.5, "stops": 0.5}
    with pytest.raises(ValueError):
        mx.score("x", "y", ["bleu"])


def test_key_facts_in_held_out_rows_add_contains_to_the_default_metrics():
    from types import SimpleNamespace

    from runner.evaluate.stage import DEFAULT_METRICS, metrics_for

    rows = [{"id": "a", "key_fact": r"\b27\b"}, {"id": "b", "key_fact": None}]
    defaults = {"metrics": list(DEFAULT_METRICS)}
    no_eval = SimpleNamespace(data={})
    assert metrics_for(no_eval, defaults, rows) == [*DEFAULT_METRICS, "contains"]
    assert metrics_for(no_eval, defaults, [{"id": "a", "key_fact": None}]) == list(DEFAULT_METRICS)
    # A recipe that lists its metrics gets exactly those.
    chosen = SimpleNamespace(data={"eval": {"metrics": ["f1"]}})
    assert metrics_for(chosen, {"metrics": ["f1"]}, rows) == ["f1"]


def test_a_multi_turn_held_out_row_is_asked_with_its_earlier_turns_and_scored_on_its_last_answer(tmp_path):
    """The model answers the last user turn with the conversation before it in context (earlier assistant turns
    included); the reference is the final assistant turn."""
    from types import SimpleNamespace

    from runner.evaluate.stage import held_out_rows
    from runner.layout import RunLayout

    layout = RunLayout(tmp_path / "runs" / "r")
    path = layout.data_file("main", "held_out")
    path.parent.mkdir(parents=True)
    turns = [{"role": "user", "content": "What is the parking fee?"},
             {"role": "assistant", "content": "17 euros per month."},
             {"role": "user", "content": "And for motorbikes?"},
             {"role": "assistant", "content": "Motorbikes park for 6 euros per month."}]
    path.write_text(json.dumps({"id": "moto", "messages": turns, "key_fact": r"\b6\b"}) + "\n")
    res = SimpleNamespace(layout=layout, data={})
    _, rows = held_out_rows(res, SimpleNamespace(data_block="main"), {})
    assert rows == [{"id": "moto", "conversation": turns[:3], "reference": turns[3]["content"], "key_fact": r"\b6\b"}]


def test_a_multi_turn_preference_held_out_row_is_asked_with_its_turns_and_scored_on_the_chosen_answer(tmp_path):
    from types import SimpleNamespace

    from runner.evaluate.stage import held_out_rows
    from runner.layout import RunLayout

    layout = RunLayout(tmp_path / "runs" / "r")
    path = layout.data_file("main", "held_out")
    path.parent.mkdir(parents=True)
    turns = [{"role": "user", "content": "What is the parking fee?"},
             {"role": "assistant", "content": "17 euros per month."},
             {"role": "user", "content": "And for motorbikes?"}]
    single = {"prompt": "Parking fee?", "chosen": "17 euros.", "rejected": "Free."}
    path.write_text(json.dumps({"messages": turns, "chosen": "6 euros per month.", "rejected": "Free."}) + "\n"
                    + json.dumps(single) + "\n")
    res = SimpleNamespace(layout=layout, data={"system_prompt": "Be brief."})
    _, rows = held_out_rows(res, SimpleNamespace(data_block="main"), {})
    system = {"role": "system", "content": "Be brief."}
    assert rows[0]["conversation"] == [system, *turns] and rows[0]["reference"] == "6 euros per month."
    assert rows[1]["conversation"] == [system, {"role": "user", "content": "Parking fee?"}]

"""Data checks: row validation with file:line, policies, normalisation, report.json, the `data check` command."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from runner.data import check as datacheck
from runner.data import prepare as dataprep
from runner.errors import TunebookError

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / ".cache" / "models" / "smollm2-135m-instruct"
KOCHI = "കൊച്ചി കേരളത്തിലെ ഒരു തുറമുഖ നഗരമാണ്."  # precomposed (NFC) Malayalam


def jl(*rows) -> str:
    """JSON Lines text; a str row is written as-is (for broken lines)."""
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def qa(i: int, extra: str = "") -> dict:
    return {"instruction": f"Question number {i} about the leave policy {extra}".strip(),
            "output": f"Answer number {i}: employees get {i + 10} days of paid leave per year."}


def recipe(name="d", data="train: data/train.jsonl\n  format: alpaca", extra="") -> str:
    base = MODEL if MODEL.exists() else "HuggingFaceTB/SmolLM2-135M-Instruct"
    return f"name: {name}\nbase_model: {base}\ndata:\n  {data}\nstages: [sft]\n{extra}"


def resolved(root: Path, name: str = "d"):
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    return resolve(load_recipe(name, root), template_check=False)


def read(path: Path, fmt: str, **kw) -> datacheck.FileResult:
    return datacheck.read_file(path, path.name, fmt, "train", **kw)


# ------------------------------------------------------------------------------------------- row problems


def test_broken_json_on_line_3_is_reported_at_that_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(jl(qa(1), qa(2), '{"instruction": "broken", "output": }', qa(4)))
    fr = read(f, "alpaca")
    assert [(p.kind, p.where) for p in fr.problems] == [("invalid_json", "train.jsonl:3")]
    assert "column" in fr.problems[0].message
    assert [r.line for r in fr.rows] == [1, 2, 4]


def test_missing_field_wrong_type_and_empty_field(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(jl(qa(1), {"instruction": "No answer here"}, {"instruction": 7, "output": "x"},
                    {"instruction": "Blank answer", "output": "   "}, ["not", "an", "object"]))
    fr = read(f, "alpaca")
    got = [(p.kind, p.where, p.field) for p in fr.problems]
    assert ("missing_field", "train.jsonl:2", "output") in got
    assert ("wrong_type", "train.jsonl:3", "instruction") in got
    assert ("empty_field", "train.jsonl:4", "output") in got
    assert ("not_object", "train.jsonl:5", None) in got
    assert fr.invalid_rows == 4 and len(fr.rows) == 1


def test_chat_rows_unknown_role_no_assistant_and_wrong_format_hint(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(jl({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                    {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
                    {"messages": [{"role": "user", "content": "only a question"}]},
                    {"instruction": "an alpaca row", "output": "in a chat file"}))
    fr = read(f, "chat")
    got = {(p.kind, p.where, p.field) for p in fr.problems}
    assert ("unknown_role", "chat.jsonl:2", "messages[1].role") in got
    assert ("no_assistant", "chat.jsonl:3", "messages") in got
    wrong = next(p for p in fr.problems if p.line == 4)
    assert wrong.kind == "missing_field" and "looks like alpaca" in wrong.message


def test_too_short_outputs_and_identical_preference_pair(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(jl(qa(1), {"instruction": "Short?", "output": "ok"}))
    fr = read(f, "alpaca", min_output_chars=5)
    assert [(p.kind, p.where, p.field) for p in fr.problems] == [("too_short", "train.jsonl:2", "output")]
    p = tmp_path / "prefs.jsonl"
    p.write_text(jl({"prompt": "q", "chosen": "Same answer.", "rejected": "Same  answer."},
                    {"prompt": "q2", "chosen": "Good.", "rejected": "Bad."}))
    fr = read(p, "preference")
    assert [(x.kind, x.where) for x in fr.problems] == [("same_answer", "prefs.jsonl:1")]


def test_line_that_is_not_utf8_is_reported(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_bytes(jl(qa(1)).encode() + '{"instruction": "Café?", "output": "Oui."}\n'.encode("latin-1"))
    fr = read(f, "alpaca")
    assert [(p.kind, p.where) for p in fr.problems] == [("bad_encoding", "train.jsonl:2")]


# ------------------------------------------------------------------------------------------ normalisation


def test_nfd_malayalam_is_normalised_and_reported_at_its_line(project):
    nfd = unicodedata.normalize("NFD", KOCHI)
    assert nfd != KOCHI
    src = jl(qa(1), {"instruction": "Where is Kochi?", "output": nfd}, qa(3),
             {"instruction": "Bell\x07 in text", "output": "Trailing spaces   \nand tabs\t\n"})
    root = project(recipes={"d": recipe(data="train: data/train.jsonl\n  format: alpaca\n  held_out_fraction: 0")},
                   files={"data/train.jsonl": src})
    before = (root / "data/train.jsonl").read_bytes()
    dc = dataprep.run_checks(resolved(root), tokens=False)
    norm = dc.blocks["main"].result.norm
    assert norm.examples["nfc"] == ["data/train.jsonl:2"]
    assert norm.examples["control"] == ["data/train.jsonl:4"]
    assert norm.examples["whitespace"] == ["data/train.jsonl:4"]
    assert norm.rows_changed == 2
    assert (root / "data/train.jsonl").read_bytes() == before  # never over the user's file
    rows = [json.loads(x) for x in (root / "runs/d/data/main/train.jsonl").read_text().splitlines()]
    kochi = next(r for r in rows if r["messages"][0]["content"] == "Where is Kochi?")
    assert kochi["messages"][1]["content"] == KOCHI
    bell = next(r for r in rows if r["messages"][0]["content"].startswith("Bell"))
    assert bell["messages"][0]["content"] == "Bell in text"
    assert bell["messages"][1]["content"] == "Trailing spaces\nand tabs"
    report = json.loads((root / "runs/d/data/report.json").read_text())
    assert report["blocks"]["main"]["normalization"]["by_fix"]["nfc"] == 1


def test_nfc_and_nfd_copies_of_a_row_are_exact_duplicates(project):
    nfd = unicodedata.normalize("NFD", KOCHI)
    src = jl({"instruction": "Where is Kochi?", "output": KOCHI}, qa(2), qa(3),
             {"instruction": "Where is Kochi?", "output": nfd})
    root = project(recipes={"d": recipe()}, files={"data/train.jsonl": src})
    dc = dataprep.run_checks(resolved(root), tokens=False)
    exact = dc.blocks["main"].result.dedup.exact
    assert [c["rows"] for c in exact] == [["data/train.jsonl:1", "data/train.jsonl:4"]]


def test_normalize_text_keeps_joiners_used_by_indic_scripts():
    fixes: set = set()
    chillu = "അവന്\u200d"  # ZWJ forms a chillu letter in older Malayalam text
    assert datacheck.normalize_text(chillu, fixes) == chillu and not fixes
    assert datacheck.normalize_text("a\r\nb \r\n", fixes) == "a\nb" and fixes == {"control", "whitespace"}


# ---------------------------------------------------------------------------------------------- policies


def test_policy_fail_stops_with_first_20_problems_and_writes_the_report(project):
    src = jl(*[qa(i) for i in range(1, 6)], *['{"broken": ' for _ in range(25)])
    root = project(recipes={"d": recipe()}, files={"data/train.jsonl": src})
    res = resolved(root)
    with pytest.raises(TunebookError) as exc:
        dataprep.prepare(res, quiet=True)
    msg = str(exc.value)
    assert "25 invalid rows" in msg and "data/train.jsonl:6: invalid JSON" in msg
    assert "data/train.jsonl:25:" in msg and "data/train.jsonl:26:" not in msg  # first 20 only
    assert "and 5 more" in msg and "on_error: drop" in msg
    assert not (root / "runs/d/data/main/train.jsonl").exists()
    report = json.loads((root / "runs/d/data/report.json").read_text())
    assert report["ok"] is False
    assert report["blocks"]["main"]["problems"]["by_kind"] == {"invalid_json": 25}
    assert report["blocks"]["main"]["problems"]["items"][0]["where"] == "data/train.jsonl:6"


def test_policy_drop_trains_without_invalid_rows_and_reports_them(project):
    src = jl(*[qa(i) for i in range(1, 21)], {"instruction": "no output"})
    root = project(recipes={"d": recipe(data="train: data/train.jsonl\n  format: alpaca\n  on_error: drop")},
                   files={"data/train.jsonl": src})
    blocks = dataprep.prepare(resolved(root), quiet=True)
    pb = blocks["main"]
    assert pb.counts["train"] + pb.counts["held_out"] == 20
    assert pb.hashes["train"] and (root / "runs/d/data/main/train.jsonl").is_file()
    report = json.loads((root / "runs/d/data/report.json").read_text())
    main = report["blocks"]["main"]
    assert report["ok"] is True and main["counts"]["dropped_invalid"] == 1
    assert main["problems"]["items"] == [{"kind": "missing_field", "where": "data/train.jsonl:21",
                                          "field": "output", "message": "missing field 'output'"}]
    assert main["files"]["train"]["sha256"] == pb.hashes["train"]
    assert main["sources"]["data/train.jsonl"]["rows"] == 21


# ---------------------------------------------------------------------------------------------- command


def test_data_check_command_exits_2_and_lists_problems(project, capsys):
    from runner.cli.main import main

    src = jl(qa(1), qa(2), '{"instruction": "broken", "output": }', {"instruction": "missing"})
    root = project(recipes={"d": recipe()}, files={"data/train.jsonl": src})
    rc = main(["--root", str(root), "data", "check", "d", "--no-tokens"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "data/train.jsonl:3" in out and "invalid JSON" in out
    assert "data/train.jsonl:4" in out and "output" in out
    assert "FAIL" in out and "invalid row" in err
    assert json.loads((root / "runs/d/data/report.json").read_text())["ok"] is False


def test_data_check_command_ok(project, capsys):
    from runner.cli.main import main

    root = project(recipes={"d": recipe()}, files={"data/train.jsonl": jl(*[qa(i) for i in range(1, 11)])})
    rc = main(["--root", str(root), "data", "check", "d", "--no-tokens"])
    out, _ = capsys.readouterr()
    assert rc == 0
    for label in ("rows in", "invalid", "changed by normalisation", "exact duplicates", "near duplicates",
                  "held-out rows", "validation rows", "tokens p50 / p95 / max", "over sequence_len",
                  "suggested sequence_len", "tokens per epoch"):
        assert label in out
    assert (root / "runs/d/data/main/train.jsonl").is_file()


def test_no_training_rows_left_stops_the_run(project):
    src = jl({"instruction": "no answer"}, {"instruction": "none here either"})
    root = project(recipes={"d": recipe(data="train: data/train.jsonl\n  format: alpaca\n  on_error: drop")},
                   files={"data/train.jsonl": src})
    with pytest.raises(TunebookError, match="no training rows left"):
        dataprep.prepare(resolved(root), quiet=True)


# ------------------------------------------------------------------------------------ structured output

TOOL_SCHEMA = {"type": "object", "required": ["tool", "args"], "additionalProperties": False,
               "properties": {"tool": {"enum": ["lookup_order", "refund"]}, "args": {"type": "object"}}}


def _call(tool: str, **args) -> str:
    return json.dumps({"tool": tool, "args": args})


def test_every_answer_must_satisfy_the_output_schema_multi_turn_and_held_out_included(project):
    """Tool-call rows: a multi-turn chat whose second assistant turn is not JSON, one calling a tool the schema does
    not know, and a held-out reference that breaks the schema are each reported at their line and field."""
    def chat(*turns):
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    good = [chat(("user", f"Where is order {i}?"), ("assistant", _call("lookup_order", id=i)),
                 ("user", "Refund it."), ("assistant", _call("refund", id=i))) for i in range(1, 9)]
    train = jl(*good, chat(("user", "Where is order 9?"), ("assistant", _call("lookup_order", id=9)),
                           ("user", "Thanks"), ("assistant", "You're welcome!")),
               chat(("user", "Cancel order 10"), ("assistant", _call("cancel", id=10))))
    held = jl(chat(("user", "Where is order 11?"), ("assistant", _call("lookup_order", id=11))),
              chat(("user", "Where is order 12?"), ("assistant", '{"tool": "refund"}')))
    data = ("train: data/train.jsonl\n  format: chat\n  held_out: data/held.jsonl\n"
            "  output_schema: schemas/tool_call.json")
    root = project(recipes={"d": recipe(data=data)},
                   files={"data/train.jsonl": train, "data/held.jsonl": held,
                          "schemas/tool_call.json": json.dumps(TOOL_SCHEMA)})
    with pytest.raises(TunebookError) as exc:
        dataprep.prepare(resolved(root), quiet=True)
    msg = " ".join(str(exc.value).split())
    assert "3 invalid rows in the data (3 answer not valid for output_schema)" in msg, msg
    assert "data/train.jsonl:9: messages[3].content: not JSON (Expecting value at character 0)" in msg, msg
    assert ("data/train.jsonl:10: messages[1].content: does not match output_schema at tool: 'cancel' is not one "
            "of ['lookup_order', 'refund']") in msg, msg
    assert ("data/held.jsonl:2: messages[1].content: does not match output_schema at the top level: 'args' is a "
            "required property") in msg, msg

    # on_error: drop trains on the rest and says which rows went.
    (root / "recipes/d.yaml").write_text(recipe(data=data + "\n  on_error: drop"))
    pb = dataprep.prepare(resolved(root), quiet=True)["main"]
    assert pb.counts["train"] + pb.counts.get("validation", 0) == 8 and pb.counts["held_out"] == 1
    report = json.loads((root / "runs/d/data/report.json").read_text())
    assert report["blocks"]["main"]["problems"]["by_kind"] == {"bad_output": 3}


def test_alpaca_outputs_and_preference_chosen_answers_are_checked_rejected_ones_not(tmp_path):
    from runner import schemafile

    v = schemafile.compile_validator(TOOL_SCHEMA)
    f = tmp_path / "train.jsonl"
    f.write_text(jl({"instruction": "Find order 1", "output": _call("lookup_order", id=1)},
                    {"instruction": "Find order 2", "output": "```json\n" + _call("lookup_order", id=2) + "\n```"}))
    r = read(f, "alpaca", output_validator=v)
    assert [(p.line, p.kind, p.field) for p in r.problems] == [(2, "bad_output", "output")]
    f.write_text(jl({"prompt": "Find order 3", "chosen": _call("lookup_order", id=3), "rejected": "It is on its way."}))
    assert read(f, "preference", output_validator=v).problems == []


def test_an_output_schema_that_is_missing_or_no_schema_is_a_recipe_error(project):
    from runner.errors import RecipeErrors
    from runner.recipe.load import load_recipe

    data = "train: data/train.jsonl\n  format: alpaca\n  output_schema: schemas/x.json"
    root = project(recipes={"d": recipe(data=data)}, files={"data/train.jsonl": jl(qa(1))})
    with pytest.raises(RecipeErrors) as exc:
        load_recipe("d", root)
    assert "recipes/d.yaml:6: data.output_schema: data file 'schemas/x.json' not found" in str(exc.value)
    (root / "schemas").mkdir()
    (root / "schemas/x.json").write_text('{"type": "no-such-type"}')
    with pytest.raises(RecipeErrors) as exc:
        load_recipe("d", root)
    assert "'schemas/x.json' is not a valid JSON Schema" in str(exc.value)


def test_a_bad_multi_turn_preference_row_is_reported_with_its_line(tmp_path, tiny_base):
    from tests.conftest import make_project, tunebook

    good = {"messages": [{"role": "user", "content": "Leave days?"}, {"role": "assistant", "content": "27."},
                         {"role": "user", "content": "And sick days?"}], "chosen": "12 days.", "rejected": "No idea."}
    bad = {**good, "messages": good["messages"][:2]}
    root = make_project(tmp_path / "p", {"h": f"base_model: {tiny_base}\ndata: {{train: data/p.jsonl, format: "
                                              "preference}\nstages: [dpo]\n"},
                        {"data/p.jsonl": "".join(json.dumps(r) + "\n" for r in [good, bad, good])})
    r = tunebook("--root", str(root), "data", "check", "h", "--no-tokens")
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "data/p.jsonl:2" in out and "must go user, assistant, user" in out, out[-2000:]

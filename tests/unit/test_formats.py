"""The three row formats (runner.formats): detect, read, convert."""
from __future__ import annotations

import json

import pytest

from runner import formats
from runner.errors import TunebookError

ALPACA = {"instruction": "How many days of leave?", "input": "Full-time staff.", "output": "25 days.", "id": "a1"}
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                     {"role": "assistant", "content": "Hello.", "weight": 1}]}
PREF = {"prompt": "Is it warm?", "chosen": "Yes, 21 °C.", "rejected": "No idea."}


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


@pytest.mark.parametrize("row,fmt", [(ALPACA, "alpaca"), (CHAT, "chat"), (PREF, "preference"),
                                     ({"conversations": []}, "chat"), ({"text": "x"}, None)])
def test_row_format(row, fmt):
    assert formats.row_format(row) == fmt


def test_sharegpt_rows_are_no_format_for_the_data_check_hint():
    assert formats.row_format({"conversations": []}, sharegpt_as_chat=False) is None


def test_detect_format_reads_the_first_non_empty_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n" + jl(PREF, ALPACA))
    assert formats.detect_format(f) == "preference"
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    assert formats.detect_format(tmp_path / "bad.jsonl") is None
    assert formats.detect_format(tmp_path / "missing.jsonl") is None
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    assert formats.detect_format(tmp_path / "list.jsonl") is None


def test_block_format_declared_wins_over_detected(tmp_path):
    (tmp_path / "d.jsonl").write_text(jl(CHAT))
    assert formats.block_format({"train": "d.jsonl"}, tmp_path) == "chat"
    assert formats.block_format({"train": ["d.jsonl"], "format": "alpaca"}, tmp_path) == "alpaca"
    assert formats.block_format({"train": []}, tmp_path) is None


def test_read_jsonl_skips_bad_lines_unless_strict(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(jl(ALPACA, "{oops", ALPACA))
    assert [n for n, _ in formats.read_jsonl(f)] == [1, 3]
    with pytest.raises(TunebookError) as exc:
        formats.read_jsonl(f, "x.jsonl", strict=True)
    assert exc.value.where == "x.jsonl:2"
    (tmp_path / "y.jsonl").write_bytes(b"\xef\xbb\xbf" + jl(ALPACA, [1]).encode())  # BOM, then not an object
    assert [n for n, _ in formats.read_jsonl(tmp_path / "y.jsonl")] == [1]


def test_turns_and_answers():
    assert formats.turns(ALPACA, "alpaca") == [("user", "How many days of leave?\n\nFull-time staff."),
                                               ("assistant", "25 days.")]
    assert formats.turns(CHAT, "chat") == [("user", "Hi?"), ("assistant", "Hello.")]
    assert [r for r, _ in formats.turns(PREF, "preference")] == ["user", "chosen", "rejected"]
    assert formats.answers(CHAT, "chat") == [("messages[2].content", "Hello.")]
    assert formats.answers(PREF, "preference") == [("chosen", "Yes, 21 °C.")]


def test_to_messages_adds_the_system_prompt_once_and_keeps_ids():
    out = formats.to_messages(ALPACA, "alpaca", "Be kind.")
    assert out["messages"][0] == {"role": "system", "content": "Be kind."} and out["id"] == "a1"
    chat = formats.to_messages(CHAT, "chat", "Be kind.")
    assert chat["messages"][0]["content"] == "Be brief."            # the row's own system prompt wins
    assert all(set(m) == {"role", "content"} for m in chat["messages"])
    with pytest.raises(ValueError):
        formats.to_messages(PREF, "preference", None)


def test_convert_by_split():
    train = formats.convert(PREF, "preference", "train", "Be kind.")
    assert train == {"messages": [{"role": "system", "content": "Be kind."},
                                  {"role": "user", "content": "Is it warm?"}],
                     "chosen": "Yes, 21 °C.", "rejected": "No idea."}
    assert formats.convert(PREF, "preference", "held_out", "Be kind.") is PREF
    assert formats.convert(ALPACA, "alpaca", "held_out", None)["messages"][-1]["content"] == "25 days."


MULTI = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Leave days?"},
                      {"role": "assistant", "content": "27 days."}, {"role": "user", "content": "And sick days?"}],
         "chosen": "12 days a year.", "rejected": "Ask HR."}


def test_a_multi_turn_preference_row_keeps_its_conversation():
    assert formats.row_format(MULTI) == "preference"
    out = formats.to_preference(MULTI, "Recipe prompt.")
    assert out["messages"] == MULTI["messages"] and out["chosen"] == "12 days a year."  # its own system wins
    no_system = {**MULTI, "messages": MULTI["messages"][1:]}
    assert formats.to_preference(no_system, "Recipe prompt.")["messages"][0] == {"role": "system",
                                                                                  "content": "Recipe prompt."}
    assert formats.turns(MULTI, "preference") == [("user", "Leave days?"), ("assistant", "27 days."),
                                                  ("user", "And sick days?"), ("chosen", "12 days a year."),
                                                  ("rejected", "Ask HR.")]
    assert formats.content_problems(MULTI, "preference") == []


@pytest.mark.parametrize("row,field,message", [
    ({"chosen": "a b", "rejected": "c d"}, "prompt", "missing field 'prompt' (or `messages`"),
    ({"prompt": "q", "messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "messages",
     "both prompt and messages"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "messages", "roles user, assistant: after an optional system message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}], "chosen": "a",
      "rejected": "b"}, "messages", "must go user, assistant, user"),
    ({"messages": [{"role": "system", "content": "s"}], "chosen": "a", "rejected": "b"}, "messages",
     "roles (none)"),
    ({"system": "s", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
      "chosen": "a", "rejected": "b"}, "system", "a system field and a system message"),
])
def test_preference_prompt_problems(row, field, message):
    problems = formats.content_problems(row, "preference")
    assert [(p[1], message in p[2]) for p in problems] == [(field, True)], problems

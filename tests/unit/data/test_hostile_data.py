"""Hostile and malformed data files: each kind ends in a one-paragraph error naming the file (and line) from both
`tunebook data check` and `tunebook validate`, exit code 2, no traceback, and no prepared file written.

One bad row must not crash the commands that derive defaults from the data (validate, resolve): the derived
defaults read only the rows that pass the row check, and the row checker reports the bad one."""
from __future__ import annotations

import gzip
import io
import json
import zipfile

import pytest

from runner import formats
from tests.conftest import make_project, tunebook


def jl(*rows) -> bytes:
    """JSON Lines bytes; a bytes/str row is written as-is."""
    out = b""
    for r in rows:
        if isinstance(r, bytes):
            out += r + b"\n"
        elif isinstance(r, str):
            out += r.encode() + b"\n"
        else:
            out += json.dumps(r, ensure_ascii=False).encode() + b"\n"
    return out


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is the leave rule number {i}?"},
                         {"role": "assistant", "content": f"Rule {i}: employees get {i + 10} days of leave."}]}


def qa(i: int) -> dict:
    return {"instruction": f"What is the leave rule number {i}?", "output": f"Rule {i}: {i + 10} days of leave."}


GOOD_CHAT = [chat(i) for i in range(1, 7)]
GOOD_QA = [qa(i) for i in range(1, 7)]


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.jsonl", jl(*GOOD_QA))
    return buf.getvalue()


# (id, format declared in the recipe (None: detected), train bytes, held-out bytes or None, where, message)
KINDS = [
    ("gzip", "alpaca", gzip.compress(jl(*GOOD_QA)), None, "data/train.jsonl:1", "gzip-compressed"),
    ("gzip-undeclared", None, gzip.compress(jl(*GOOD_QA)), None, "data/train.jsonl:1", "gzip-compressed"),
    ("zip", "alpaca", _zip(), None, "data/train.jsonl:1", "a zip archive"),
    ("nul-bytes", "alpaca", jl(*GOOD_QA) + b"\x00\x01\x02binary", None, "data/train.jsonl:7", "binary"),
    ("utf16", None, "\ufeff".encode("utf-16-le") + jl(*GOOD_QA).decode().encode("utf-16-le"), None,
     "data/train.jsonl:1", "UTF-16"),
    ("latin1-row", "alpaca", jl(GOOD_QA[0], '{"instruction": "Caf\xe9?", "output": "Ol\xe9."}'.encode("latin-1"),
                                *GOOD_QA[1:]), None, "data/train.jsonl:2", "not valid UTF-8"),
    ("messages-not-a-list", "chat", jl(GOOD_CHAT[0], {"messages": "hello"}, *GOOD_CHAT[1:]), None,
     "data/train.jsonl:2", "expected array"),
    ("content-a-number", "chat", jl(GOOD_CHAT[0], {"messages": [{"role": "user", "content": 7},
                                                                {"role": "assistant", "content": 8.5}]},
                                    *GOOD_CHAT[1:]), None, "data/train.jsonl:2", "expected string"),
    ("message-not-an-object", "chat", jl(*GOOD_CHAT[:2], {"messages": ["hi", 3]}, *GOOD_CHAT[2:]), None,
     "data/train.jsonl:3", "expected object"),
    ("role-a-list", "chat", jl(GOOD_CHAT[0], {"messages": [{"role": ["user"], "content": "x"},
                                                           {"role": "assistant", "content": "y"}]}), None,
     "data/train.jsonl:2", "unknown role"),
    ("instruction-null", "alpaca", jl(GOOD_QA[0], {"instruction": None, "output": "x"}, *GOOD_QA[1:]), None,
     "data/train.jsonl:2", "expected string, found null"),
    ("output-an-object", "alpaca", jl(*GOOD_QA, {"instruction": "q", "output": {"text": "a"}}), None,
     "data/train.jsonl:7", "expected string, found an object"),
    ("output-nan", "alpaca", jl(GOOD_QA[0], '{"instruction": "q", "output": NaN}', *GOOD_QA[1:]), None,
     "data/train.jsonl:2", "expected string"),
    ("nested-3000-deep", "alpaca", jl(GOOD_QA[0], "[" * 3000 + "]" * 3000, *GOOD_QA[1:]), None,
     "data/train.jsonl:2", "nested"),
    ("integer-of-5000-digits", "alpaca", jl(GOOD_QA[0], '{"instruction": "q", "output": ' + "9" * 5000 + "}",
                                            *GOOD_QA[1:]), None, "data/train.jsonl:2", "invalid JSON"),
    ("line-too-long", "alpaca", jl(GOOD_QA[0], {"instruction": "q", "output": "x" * 9000}, *GOOD_QA[1:]), None,
     "data/train.jsonl:2", "line longer than"),
    ("not-an-object", "alpaca", jl(*GOOD_QA[:3], "[1, 2, 3]", *GOOD_QA[3:]), None, "data/train.jsonl:4",
     "must be a JSON object"),
    ("empty-file", "alpaca", b"", None, "data/train.jsonl", "is empty"),
    ("blank-lines-only", "alpaca", b"\n  \n\t\n", None, "data/train.jsonl", "is empty"),
    ("empty-held-out", "alpaca", jl(*GOOD_QA), b"", "data/held.jsonl", "is empty"),
    ("held-out-equals-train", "alpaca", jl(*GOOD_QA), jl(*GOOD_QA), "data/held.jsonl", "same content"),
    ("key-fact-not-a-regex", "alpaca", jl(*GOOD_QA), jl({**qa(20), "key_fact": "(27 days"}),
     "data/held.jsonl:1", "unusable"),
    ("key-fact-a-whole-answer", "alpaca", jl(*GOOD_QA), jl({**qa(21), "key_fact": "x" * 600}),
     "data/held.jsonl:1", "unusable"),
    ("held-out-reordered-copy", "alpaca", jl(*GOOD_QA), jl(*reversed(GOOD_QA)), "data/runs-report",
     "no training rows left"),
]


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    # The real bounds are megabytes; the same code paths with small ones keep the tests fast.
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 8192)


def _project(tmp_path, tiny_base, fmt, train: bytes, held: bytes | None):
    data = "train: data/train.jsonl" + (f", format: {fmt}" if fmt else "") + (
        ", held_out: data/held.jsonl" if held is not None else "")
    root = make_project(tmp_path / "p", {"h": f"base_model: {tiny_base}\ndata: {{{data}}}\nstages: [sft]\n"})
    (root / "data").mkdir()
    (root / "data/train.jsonl").write_bytes(train)
    if held is not None:
        (root / "data/held.jsonl").write_bytes(held)
    return root


@pytest.mark.parametrize("kind,fmt,train,held,where,message", KINDS, ids=[k[0] for k in KINDS])
def test_bad_data_is_a_clean_error_from_data_check_and_validate(tmp_path, tiny_base, kind, fmt, train, held,
                                                                where, message):
    root = _project(tmp_path, tiny_base, fmt, train, held)
    if where == "data/runs-report":  # reported with the data report that lists the held-out leaks
        where = "runs/h/data/report.json"
    for cmd in (["data", "check", "h", "--no-tokens"], ["validate", "h"], ["data", "check", "h"]):
        r = tunebook("--root", str(root), *cmd)
        out = r.stdout + r.stderr
        assert r.returncode == 2, (cmd, out[-2000:])
        assert "Traceback" not in out, out[-3000:]
        assert message in out, (cmd, out[-2000:])
        if cmd[0] == "validate" and where.startswith("runs/"):
            continue  # validate writes no report: the message names no report file
        assert where in out, (cmd, out[-2000:])
        assert "error:" in r.stderr
    assert not (root / "runs/h/data/main/train.jsonl").exists(), "nothing may be prepared from bad data"


def test_a_bad_row_does_not_stop_resolve_and_is_not_counted_in_the_derived_defaults(tmp_path, tiny_base):
    """The derived-defaults step used to render every row through the chat template before the row check: a
    row with a number for content crashed resolve, validate, data check and train."""
    bad = {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": [1]}]}
    root = _project(tmp_path, tiny_base, "chat", jl(*GOOD_CHAT, bad, "not json at all"), None)
    r = tunebook("--root", str(root), "resolve", "h", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    cfg = json.loads(r.stdout)["sft"]
    assert cfg["sources"]["num_epochs"] == "derived"
    from runner.recipe.derive import epochs_for

    assert cfg["config"]["num_epochs"] == epochs_for(len(GOOD_CHAT))[0]  # the 6 good rows, not 8 lines
    r = tunebook("--root", str(root), "validate", "h")
    assert r.returncode == 2 and "data/train.jsonl:7" in r.stderr and "data/train.jsonl:8" in r.stderr
    assert "Traceback" not in r.stderr


def test_on_error_drop_validates_and_trains_only_the_good_rows(tmp_path, tiny_base):
    root = make_project(tmp_path / "p", {"h": f"base_model: {tiny_base}\n"
                                              "data: {train: data/train.jsonl, format: alpaca, on_error: drop}\n"
                                              "stages: [sft]\n"})
    (root / "data").mkdir()
    (root / "data/train.jsonl").write_bytes(jl(*GOOD_QA, {"instruction": 1, "output": 2}, b"\xff\xfe{"))
    r = tunebook("--root", str(root), "validate", "h")
    assert r.returncode == 0, r.stderr[-2000:]
    r = tunebook("--root", str(root), "data", "check", "h", "--no-tokens")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (root / "runs/h/data/main/train.jsonl").read_text().splitlines()
    report = json.loads((root / "runs/h/data/report.json").read_text())
    assert report["blocks"]["main"]["counts"]["invalid"] == 2
    assert len(rows) + report["blocks"]["main"]["counts"].get("held_out", 0) == len(GOOD_QA)


def test_a_data_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setattr(formats, "MAX_FILE_BYTES", 100)
    root = _project(tmp_path, tiny_base, "alpaca", jl(*GOOD_QA), None)
    r = tunebook("--root", str(root), "validate", "h")
    assert r.returncode == 2 and "data/train.jsonl" in r.stderr and "at most 100 bytes" in r.stderr
    assert "Split it into several files" in r.stderr and "Traceback" not in r.stderr


def test_an_unreadable_data_file_names_the_file(tmp_path, tiny_base):
    root = _project(tmp_path, tiny_base, "alpaca", jl(*GOOD_QA), None)
    (root / "data/train.jsonl").unlink()
    (root / "data/train.jsonl").mkdir()  # a folder where the file should be (root ignores chmod)
    r = tunebook("--root", str(root), "data", "check", "h", "--no-tokens")
    assert r.returncode == 2 and "data/train.jsonl" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("pattern, why", [
    ("(27 days", "is not a valid regular expression (missing )"),
    ("[0-9", "is not a valid regular expression"),
    ("x" * 501, "501 characters, more than 500"),
    (r"\b27 days\b", None),
    ("27 (days|working days)", None),
])
def test_key_fact_problem_names_what_is_wrong_with_the_pattern(pattern, why):
    got = formats.key_fact_problem(pattern)
    assert (got is None) if why is None else (why in got), got

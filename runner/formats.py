"""The three row formats of a recipe's data: detect, read, convert.

- alpaca: `{"instruction", "input"?, "output"}`: one question, one answer;
- chat: `{"messages": [{"role", "content"}, ...]}`: a conversation;
- preference: `{"prompt" | "messages", "chosen", "rejected", "system"?}`: a pair for DPO/SimPO/ORPO/KTO, after one
  question or a multi-turn conversation ending with the user's turn.

Everything that knows which keys a format has lives here: the recipe checks (`runner.recipe.load`), the
derived defaults (`runner.recipe.derive`), the data checks (`runner.data.check`) and the prepared files
(`runner.data.prepare`) all ask this module. The JSON Schema of each format (schema/rows/<format>.json) says
what a valid row is; this module assumes rows are valid unless it says otherwise.
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

from runner.errors import TunebookError
from runner.safeload import Limits, check_depth

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

FORMATS = ("alpaca", "chat", "preference")
# The JSON Schema of each format's rows: schema/rows/<format>.json.
ROW_SCHEMAS = Path(__file__).resolve().parent.parent / "schema" / "rows"

# Bounds on what one data file may make tunebook hold in memory. A row is rendered into at most a few thousand
# tokens, so a line of megabytes is a mistake (a whole document, a base64 blob), not a training example; the
# rows of a file are held in memory by the data check, so a file is bounded too (several files may be listed).
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024 * 1024
ROW_LIMITS = Limits(max_bytes=MAX_LINE_BYTES, max_depth=32, max_nodes=100_000)

# What a file that is not JSON Lines text starts with (a compressed or binary file renamed .jsonl).
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (`gunzip FILE`)"),
    (b"PK\x03\x04", "a zip archive", "unpack it and point the recipe at the .jsonl inside"),
    (b"BZh", "bzip2-compressed", "decompress it first (`bunzip2 FILE`)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (`unxz FILE`)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (`unzstd FILE`)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "unpack it and point the recipe at the .jsonl inside"),
    (b"PAR1", "a Parquet file", "convert it to JSON Lines (e.g. pandas.read_parquet(...).to_json(lines=True, "
                                "orient='records'))"),
    (b"ARROW1", "an Arrow file", "convert it to JSON Lines"),
    (b"SQLite format 3\x00", "an SQLite database", "export the rows as JSON Lines"),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"),
)


# ---------------------------------------------------------------------------------------------- detect


def row_format(row: dict, sharegpt_as_chat: bool = True) -> str | None:
    """The format a row's keys say it is in (None when they say nothing).

    ShareGPT `conversations` rows count as chat when detecting a file's format (the schema then says what to
    change); with sharegpt_as_chat=False they are no format at all (the data check explains them itself)."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "messages" in row or (sharegpt_as_chat and "conversations" in row):
        return "chat"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def detect_format(path: Path) -> str | None:
    """The format of a JSON Lines file, from its first non-empty line (None when it cannot be told: the readers
    of the file say why)."""
    try:
        with open_data(path) as fh:
            for n, raw in iter_lines(fh):
                if raw is None or raw.strip():
                    row, _ = parse_line(raw, n)
                    return row_format(row) if isinstance(row, dict) else None
    except TunebookError:
        return None
    return None


def block_format(block: dict, root: Path) -> str | None:
    """A data block's format: the declared one, or the one detected from its first training file."""
    if block.get("format") in FORMATS:
        return block["format"]
    train = block.get("train")
    first = train if isinstance(train, str) else (train or [None])[0]
    return detect_format(root / first) if first else None


# ------------------------------------------------------------------------------------------------ read


def open_data(path: Path, display: str | None = None) -> IO[bytes]:
    """A data file opened for reading (binary), after the checks that concern the whole file: it exists, is a
    regular file, is readable, is at most MAX_FILE_BYTES, and is not compressed or binary. Raises TunebookError
    naming the file (line 1 for content problems) and what to do."""
    display = display or str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise TunebookError(f"data file {display} is not a regular file", where=display,
                                fix="Point the recipe's data block at a .jsonl file.")
        fh = open(path, "rb")
    except FileNotFoundError:
        raise TunebookError(f"data file not found: {display}", where=display,
                            fix="Check the path in the recipe's data block (relative to the project root).") from None
    except OSError as exc:
        raise TunebookError(f"cannot read data file {display}: {exc.strerror or exc}", where=display,
                            fix="Check the file's permissions and the path in the recipe's data block.") from None
    if size > MAX_FILE_BYTES:
        fh.close()
        raise TunebookError(f"data file {display} is {size:,} bytes; one data file may hold at most "
                            f"{MAX_FILE_BYTES:,} bytes", where=display,
                            fix="Split it into several files and list them all under the block's `train:`.")
    head = fh.read(65536)
    fh.seek(0)
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            fh.close()
            raise TunebookError(f"data file {display} is {what}, not JSON Lines text", where=f"{display}:1",
                                fix=f"A data file holds one JSON object per line as UTF-8 text: {fix}.")
    if b"\x00" in head:
        fh.close()
        n = head.count(b"\n", 0, head.index(b"\x00")) + 1
        raise TunebookError(f"data file {display} is binary (it contains NUL bytes), not JSON Lines text",
                            where=f"{display}:{n}",
                            fix="A data file holds one JSON object per line as UTF-8 text; is this the right file?")
    return fh


def iter_lines(fh: IO[bytes], max_line: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of every line of a binary file; a line longer than `max_line` bytes (default
    MAX_LINE_BYTES) is skipped without being held in memory and comes as (n, None)."""
    max_line = max_line or MAX_LINE_BYTES
    n = 0
    while raw := fh.readline(max_line + 1):
        n += 1
        if len(raw) > max_line and not raw.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield n, None
            continue
        yield n, raw


def parse_line(raw: bytes | None, n: int) -> tuple[object, tuple[str, str] | None]:
    """(value, None) for a line that is one JSON object, else (None, (problem kind, message)); the kinds are
    the data check's (runner.data.check.PROBLEM_KINDS)."""
    if raw is None:
        return None, ("too_long", f"line longer than {MAX_LINE_BYTES:,} bytes (one row should be one example, "
                                  "not a whole document)")
    if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, ("bad_encoding", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}): "
                                      "the file mixes encodings; save it as UTF-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, ("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return None, ("invalid_json", f"values nested more than {ROW_LIMITS.max_depth} levels deep")
    except ValueError as exc:  # an integer with more digits than Python converts
        return None, ("invalid_json", f"invalid JSON: {exc}")
    try:
        check_depth(value, "", ROW_LIMITS)
    except TunebookError:
        return None, ("invalid_json", f"values nested more than {ROW_LIMITS.max_depth} levels deep "
                                      f"(or more than {ROW_LIMITS.max_nodes:,} values in one row)")
    if not isinstance(value, dict):
        return None, ("not_object", f"each line must be a JSON object, found {type_name(value)}")
    return value, None


def parsed_lines(fh: IO[bytes]) -> Iterator[tuple[int, int, dict | None, tuple[str, str] | None]]:
    """Every non-blank line of an open data file (open_data), parsed: (line number, bytes read since the previous
    one, the row or None, and parse_line's (problem kind, message) for a line that is not one JSON object). The one
    line loop of every reader of data files (read_jsonl, checked_rows, the data check's read_file)."""
    nbytes = 0
    for n, raw in iter_lines(fh):
        nbytes += len(raw) if raw is not None else 0
        if raw is not None and not raw.strip():
            continue
        row, problem = parse_line(raw, n)
        yield n, nbytes, row, problem
        nbytes = 0


def type_name(v) -> str:
    """A JSON value's type in words ("a list", "an integer", ...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def empty_file_error(display: str) -> TunebookError:
    """The error of a data file without a single row."""
    return TunebookError(f"data file {display} is empty: it has no rows", where=display,
                         fix="Put one JSON object per line in it, or remove it from the recipe's data block.")


def read_jsonl(path: Path, display: str | None = None, strict: bool = False) -> list[tuple[int, dict]]:
    """(line number, row) for every non-empty line that is a JSON object.

    Lines that are not (broken JSON, not UTF-8, not an object, too long) are skipped, because `tunebook data
    check` and the pipeline's data step report them with their file:line; with strict=True the first one is an
    error. A file that is not JSON Lines at all (compressed, binary, too big, unreadable) is always an error."""
    display = display or str(path)
    rows = []
    with open_data(path, display) as fh:
        for n, _, row, problem in parsed_lines(fh):
            if problem is not None:
                if strict:
                    raise TunebookError(problem[1], where=f"{display}:{n}",
                                        fix="Each line must be one JSON object; run `tunebook data check` "
                                            "for a full report")
                continue
            rows.append((n, row))
    return rows


# ------------------------------------------------------------------------------------------- normalise

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_TRAILING = re.compile(r"[ \t\u00a0\u3000]+(?=\n)")


def normalize_text(s: str, fixes: set) -> str:
    """NFC, no stray control characters (tab and newline kept; CR/CRLF become LF), no trailing whitespace."""
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
        fixes.add("control")
    if not s.isascii():
        if not unicodedata.is_normalized("NFC", s):
            s = unicodedata.normalize("NFC", s)
            fixes.add("nfc")
        if _CONTROL.search(s):
            s = _CONTROL.sub("", s)
            fixes.add("control")
    elif _CONTROL.search(s):
        s = _CONTROL.sub("", s)
        fixes.add("control")
    if s and (s[-1].isspace() or " \n" in s or "\t\n" in s or "\u00a0\n" in s or "\u3000\n" in s):
        t = _TRAILING.sub("", s).rstrip()
        if t != s:
            s = t
            fixes.add("whitespace")
    return s


def normalize_value(v, fixes: set):
    """Normalise every string inside a JSON value (keys untouched)."""
    if isinstance(v, str):
        return normalize_text(v, fixes)
    if isinstance(v, dict):
        return {k: normalize_value(x, fixes) for k, x in v.items()}
    if isinstance(v, list):
        return [normalize_value(x, fixes) for x in v]
    return v


# -------------------------------------------------------------------------------------------- validate


KEY_FACT_MAX_CHARS = 500


@lru_cache(maxsize=None)
def row_validator(fmt: str) -> "Draft202012Validator":
    """The JSON Schema validator of one format's rows (schema/rows/<format>.json)."""
    from jsonschema import Draft202012Validator  # a tenth of a second to import: only when rows are checked

    return Draft202012Validator(json.loads((ROW_SCHEMAS / f"{fmt}.json").read_text()))


def content_problems(row: dict, fmt: str, min_output_chars: int = 1) -> list[tuple[str, str | None, str]]:
    """(kind, field, message) of what is wrong with a schema-valid row beyond its types: nothing to train on,
    answers too short, a preference pair that prefers nothing."""
    out = []
    if fmt == "chat" and not any(m["role"] == "assistant" for m in row["messages"]):
        out.append(("no_assistant", "messages", "no assistant message: nothing to train on"))
    for fld, text in answers(row, fmt):
        if len(text.strip()) < min_output_chars:
            n = len(text.strip())
            out.append(("too_short", fld, f"{n} character{'s' if n != 1 else ''}, fewer than "
                                          f"min_output_chars ({min_output_chars})"))
    if fmt == "preference":
        out += _preference_prompt_problems(row)
        if " ".join(row["chosen"].split()) == " ".join(row["rejected"].split()):
            out.append(("same_answer", "rejected", "chosen and rejected are the same text: nothing to prefer"))
    if isinstance(row.get("key_fact"), str):
        why = key_fact_problem(row["key_fact"])
        if why:
            out.append(("bad_key_fact", "key_fact", why))
    return out


def _preference_prompt_problems(row: dict) -> list[tuple[str, str | None, str]]:
    """What the answers of a (schema-valid) preference row follow: exactly one of `prompt` and `messages`, and
    messages in the shape every preference trainer reads (ORPO's pairs user and assistant turns)."""
    if "prompt" not in row and "messages" not in row:
        return [("missing_field", "prompt", "missing field 'prompt' (or `messages`: the conversation before the "
                                            "answers, ending with the user's turn)")]
    if "prompt" in row and "messages" in row:
        return [("invalid", "messages", "both prompt and messages: give the question as prompt, or the whole "
                                        "conversation before the answers as messages")]
    if "messages" not in row:
        return []
    roles = [m["role"] for m in row["messages"]]
    if roles[0] == "system":
        if row.get("system"):
            return [("invalid", "system", "a system field and a system message: keep one")]
        roles = roles[1:]
    if not roles or roles != ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))] \
            or roles[-1] != "user":
        return [("invalid", "messages", f"roles {', '.join(roles) or '(none)'}: after an optional system message "
                                        "the turns must go user, assistant, user, ... and end with the user's "
                                        "(the answers are chosen and rejected)")]
    return []


def key_fact_problem(pattern: str) -> str | None:
    """Why a row's `key_fact` can't be the regular expression the `contains` metric searches answers for, or
    None. (How long a valid one may take is bounded where it is searched: runner.evaluate.metrics.)"""
    import regex  # the engine metrics.contains matches with (it has a time limit); a transformers dependency

    if len(pattern) > KEY_FACT_MAX_CHARS:
        return (f"key_fact is {len(pattern)} characters, more than {KEY_FACT_MAX_CHARS}: it is a short pattern "
                "the answer must contain (e.g. \"25 days\"), not a reference answer")
    try:
        regex.compile(pattern, regex.IGNORECASE)
    except (regex.error, RecursionError, OverflowError) as e:
        return (f"key_fact {pattern[:60]!r} is not a valid regular expression ({e}); escape the special "
                "characters (\\. for a literal dot, \\( for a bracket) or use a plain phrase")
    return None


def checked_rows(path: Path, display: str, fmt: str, min_output_chars: int = 1) -> list[dict]:
    """The rows of a data file that pass the data check's row check (parsed, normalised, valid against the
    format's schema, something to train on), for what is derived from the data before the data step runs.
    The others are skipped: the data check reports them with their file:line. A file that is not JSON Lines,
    or has no rows at all, is an error."""
    out, lines = [], 0
    validator = row_validator(fmt)
    with open_data(path, display) as fh:
        for _, _, row, problem in parsed_lines(fh):
            lines += 1
            if problem is not None:
                continue
            row = normalize_value(row, set())
            if validator.is_valid(row) and not content_problems(row, fmt, min_output_chars):
                out.append(row)
    if not lines:
        raise empty_file_error(display)
    return out


# ---------------------------------------------------------------------------------------------- fields


def _alpaca_user(row: dict) -> str:
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


def turns(row: dict, fmt: str) -> list[tuple[str, str]]:
    """(role, text) of a row without its system prompt: what duplicates are judged on."""
    if fmt == "alpaca":
        return [("user", _alpaca_user(row)), ("assistant", row["output"])]
    if fmt == "chat":
        return [(m["role"], m["content"]) for m in row["messages"] if m["role"] != "system"]
    return [(m["role"], m["content"]) for m in prompt_turns(row, None) if m["role"] != "system"] + [
        ("chosen", row["chosen"]), ("rejected", row["rejected"])]


def answers(row: dict, fmt: str) -> list[tuple[str, str]]:
    """(field, text) of what the model is trained to say in a valid row."""
    if fmt == "alpaca":
        return [("output", row["output"])]
    if fmt == "chat":
        return [(f"messages[{i}].content", m["content"]) for i, m in enumerate(row["messages"])
                if m["role"] == "assistant"]
    return [("chosen", row["chosen"])]


# --------------------------------------------------------------------------------------------- convert


def to_messages(row: dict, fmt: str, system_prompt: str | None) -> dict:
    """One alpaca or chat row in the common chat shape (`messages`, plus its `id`/`key_fact` when present)."""
    if fmt == "alpaca":
        msgs = [{"role": "user", "content": _alpaca_user(row)}, {"role": "assistant", "content": row["output"]}]
    elif fmt == "chat":
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    else:
        raise ValueError(fmt)
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    out = {"messages": msgs}
    for k in ("id", "key_fact"):
        if k in row:
            out[k] = row[k]
    return out


def prompt_turns(row: dict, system_prompt: str | None) -> list[dict]:
    """The turns a preference row's answers follow: its system prompt (the row's, else the recipe's) and its
    `prompt` as the user's turn, or its `messages`, a conversation ending with the user's turn."""
    turns = [{"role": m["role"], "content": m["content"]} for m in row["messages"]] if "messages" in row else [
        {"role": "user", "content": row["prompt"]}]
    system = row.get("system") or system_prompt
    if system and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns


def to_preference(row: dict, system_prompt: str | None) -> dict:
    """A preference row as Axolotl's chat_template.default DPO strategy reads it: prompt turns + chosen/rejected
    (the common shape that runner.preference writes each method's rows from)."""
    return {"messages": prompt_turns(row, system_prompt), "chosen": row["chosen"], "rejected": row["rejected"]}


def convert(row: dict, fmt: str, split: str, system_prompt: str | None) -> dict:
    """A valid row in the shape its split is written in."""
    if fmt == "preference":
        # Held-out preference rows keep their original shape (eval needs reference answers).
        return row if split == "held_out" else to_preference(row, system_prompt)
    return to_messages(row, fmt, system_prompt)

"""The three row formats of a recipe's data: detect, read, convert.

- alpaca: `{"instruction", "input"?, "output"}`: one question, one answer;
- chat: `{"messages": [{"role", "content"}, ...]}`: a conversation;
- preference: `{"prompt", "chosen", "rejected", "system"?}`: a pair for DPO/ORPO/KTO.

Everything that knows which keys a format has lives here: the recipe checks (`runner.recipe.load`), the
derived defaults (`runner.recipe.derive`), the data checks (`runner.data.check`) and the prepared files
(`runner.data.prepare`) all ask this module. The JSON Schema of each format (schema/rows/<format>.json) says
what a valid row is; this module assumes rows are valid unless it says otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.errors import TunebookError

FORMATS = ("alpaca", "chat", "preference")


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
    """The format of a JSON Lines file, from its first non-empty line (None when it cannot be told)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    break
            else:
                return None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return row_format(row) if isinstance(row, dict) else None


def block_format(block: dict, root: Path) -> str | None:
    """A data block's format: the declared one, or the one detected from its first training file."""
    if block.get("format") in FORMATS:
        return block["format"]
    train = block.get("train")
    first = train if isinstance(train, str) else (train or [None])[0]
    return detect_format(root / first) if first else None


# ------------------------------------------------------------------------------------------------ read


def read_jsonl(path: Path, display: str | None = None, strict: bool = False) -> list[tuple[int, dict]]:
    """(line number, row) for every non-empty line that is a JSON object.

    Lines that are not (broken JSON, not UTF-8, not an object) are skipped, because `tunebook data check` and
    the pipeline's data step report them with their file:line; with strict=True the first one is an error."""
    display = display or str(path)
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if not strict:
                    continue
                msg = (f"invalid JSON: {exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError)
                       else "not valid UTF-8")
                raise TunebookError(msg, where=f"{display}:{n}",
                                    fix="Each line must be one JSON object; run `tunebook data check` "
                                        "for a full report") from None
            if not isinstance(row, dict):
                if strict:
                    raise TunebookError("each line must be a JSON object", where=f"{display}:{n}")
                continue
            rows.append((n, row))
    return rows


# ---------------------------------------------------------------------------------------------- fields


def _alpaca_user(row: dict) -> str:
    return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")


def turns(row: dict, fmt: str) -> list[tuple[str, str]]:
    """(role, text) of a row without its system prompt: what duplicates are judged on."""
    if fmt == "alpaca":
        return [("user", _alpaca_user(row)), ("assistant", row["output"])]
    if fmt == "chat":
        return [(m["role"], m["content"]) for m in row["messages"] if m["role"] != "system"]
    return [("user", row["prompt"]), ("chosen", row["chosen"]), ("rejected", row["rejected"])]


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


def to_preference(row: dict, system_prompt: str | None) -> dict:
    """A preference row as Axolotl's chat_template.default DPO strategy reads it: prompt turns + chosen/rejected."""
    msgs = []
    system = row.get("system") or system_prompt
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": row["prompt"]})
    return {"messages": msgs, "chosen": row["chosen"], "rejected": row["rejected"]}


def convert(row: dict, fmt: str, split: str, system_prompt: str | None) -> dict:
    """A valid row in the shape its split is written in."""
    if fmt == "preference":
        # Held-out preference rows keep their original shape (eval needs reference answers).
        return row if split == "held_out" else to_preference(row, system_prompt)
    return to_messages(row, fmt, system_prompt)

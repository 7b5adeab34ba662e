"""Turn a recipe's data files into the files Axolotl trains on, under runs/<recipe>/data/<block>/.

Rows are converted to one shape per kind (chat `messages` for SFT; `messages` + `chosen`/`rejected` for
preference stages), the recipe's system prompt is added, and a seeded split carves out held-out (when no
held-out file is given) and validation rows. The user's files are never modified.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TunebookError
from .fsutil import atomic_write_json, atomic_write_text, sha256_file
from .recipe import data_format


@dataclass
class PreparedBlock:
    """The files made for one data block and their content hashes."""

    name: str
    dir: Path
    format: str
    files: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


def read_jsonl(path: Path, display: str | None = None) -> list[tuple[int, dict]]:
    """(line number, row) for every non-empty line; a line that is not a JSON object is an error."""
    display = display or str(path)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TunebookError(f"invalid JSON: {exc.msg} (column {exc.colno})", where=f"{display}:{n}",
                                    fix="Each line must be one JSON object; run `tunebook data check` "
                                        "for a full report") from None
            if not isinstance(row, dict):
                raise TunebookError("each line must be a JSON object", where=f"{display}:{n}")
            rows.append((n, row))
    return rows


def to_messages(row: dict, fmt: str, system_prompt: str | None) -> dict:
    """One training row in the common chat shape."""
    if fmt == "alpaca":
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
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
    msgs = []
    system = row.get("system") or system_prompt
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": row["prompt"]})
    return {"messages": msgs, "chosen": row["chosen"], "rejected": row["rejected"]}


def split_key(row: dict, seed: int) -> float:
    """A stable number in [0, 1) per row content: the split does not move when rows are reordered."""
    h = hashlib.sha256(f"{seed}:{json.dumps(row, sort_keys=True, ensure_ascii=False)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def seeded_split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Split rows into (kept, taken) with ~fraction taken, deterministically by content."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    ranked = sorted(range(len(rows)), key=lambda i: split_key(rows[i], seed))
    n = max(1, round(len(rows) * fraction))
    taken = set(ranked[:n])
    return [r for i, r in enumerate(rows) if i not in taken], [r for i, r in enumerate(rows) if i in taken]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def prepare_block(rec, block_name: str, block: dict, out_dir: Path, kind: str,
                  validation_fraction: float = 0.0) -> PreparedBlock:
    """Write train/validation/held_out files for one data block; return their paths and hashes."""
    fmt = data_format(block, rec.root)
    if fmt is None:
        raise TunebookError("cannot tell the data format from the first row", where=rec.where("data", "train"),
                            fix="Set data.format to alpaca, chat or preference.")
    seed = block.get("seed", 42)
    system = rec.data.get("system_prompt")
    train_files = block["train"] if isinstance(block["train"], list) else [block["train"]]
    raw = []
    for f in train_files:
        raw += [row for _, row in read_jsonl(rec.resolve_path(f), f)]
    held_rows = None
    if block.get("held_out"):
        held_rows = [row for _, row in read_jsonl(rec.resolve_path(block["held_out"]), block["held_out"])]
    elif block_name == "main" and fmt != "preference":
        raw, held_rows = seeded_split(raw, block.get("held_out_fraction", 0.1), seed)
    train_rows, val_rows = seeded_split(raw, validation_fraction, seed + 1)

    conv = (lambda r: to_preference(r, system)) if fmt == "preference" else (lambda r: to_messages(r, fmt, system))
    pb = PreparedBlock(block_name, out_dir, fmt)
    outputs = {"train": [conv(r) for r in train_rows]}
    if val_rows:
        outputs["validation"] = [conv(r) for r in val_rows]
    if held_rows is not None:
        # Held-out rows keep their original shape too (eval needs reference answers and key facts).
        outputs["held_out"] = [conv(r) if fmt != "preference" else r for r in held_rows]
    for split, rows in outputs.items():
        path = out_dir / f"{split}.jsonl"
        atomic_write_text(path, _jsonl(rows))
        pb.files[split], pb.counts[split], pb.hashes[split] = path, len(rows), sha256_file(path)
    for stale in ("validation", "held_out"):
        if stale not in outputs and (out_dir / f"{stale}.jsonl").exists():
            (out_dir / f"{stale}.jsonl").unlink()
    atomic_write_json(out_dir / "prepared.json", {"format": fmt, "counts": pb.counts, "hashes": pb.hashes})
    return pb


def prepare(res) -> dict[str, PreparedBlock]:
    """Prepare every data block a resolved recipe uses."""
    out = {}
    for name, block in res.data_blocks.items():
        kind = next((s.kind for s in res.stages if s.data_block == name and s.config), "sft")
        vf = block.get("validation_fraction", 0.0) if kind == "sft" else 0.0
        out[name] = prepare_block(res.recipe, name, block, res.run_root / "data" / name, kind, vf)
    return out


def source_hashes(res) -> dict[str, dict[str, str]]:
    """Per data block: content hash of each source file, plus a hash of the block's settings.

    These (not the prepared files) are what the lock compares, so `status` needs no preparation."""
    from .fsutil import sha256_json
    from .recipe import data_files

    out = {}
    for name, block in res.data_blocks.items():
        h = {f: sha256_file(res.recipe.resolve_path(f)) for _, f in data_files(block)}
        h["settings"] = sha256_json({"block": block, "system_prompt": res.data.get("system_prompt")})
        out[name] = h
    return out

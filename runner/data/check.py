"""Data checks for one data block: read rows with their line numbers, normalise text, validate each row against
the JSON Schema of its format (schema/rows/<format>.json), drop exact and near duplicates (before any split, so
no near-copy of a training row lands in held-out), split held-out / validation deterministically, and mix in a
share of general instruction data.

Nothing here writes files or converts rows to Axolotl's shape: `runner.data.prepare` does that with the result.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from runner import schemafile
from runner.console import NULL_REPORTER, Reporter
from runner.data import dedup
from runner.errors import TunebookError
from runner.formats import (FORMATS, answers, content_problems, detect_format, empty_file_error,  # noqa: F401
                             normalize_text, normalize_value, open_data, parsed_lines, row_format,
                             row_validator, turns, type_name)
from runner.fsutil import sha256_file
from runner.recipe.load import keypath_str

ROLES = ("system", "user", "assistant")
MAX_SHOWN = 20          # problems shown in an error / on screen
MAX_LISTED = 200        # problems, clusters and examples kept in report.json
DEFAULT_HELD_OUT_FRACTION = 0.1
DEFAULT_SEED = 42

PROBLEM_KINDS = {
    "invalid_json": "invalid JSON",
    "bad_encoding": "not UTF-8",
    "not_object": "not a JSON object",
    "too_long": "line too long",
    "missing_field": "missing field",
    "empty_field": "empty field",
    "wrong_type": "wrong type",
    "unknown_role": "unknown role",
    "too_short": "output too short",
    "no_assistant": "no assistant turn",
    "same_answer": "chosen = rejected",
    "bad_key_fact": "unusable key_fact regex",
    "bad_output": "answer not valid for output_schema",
    "no_reference": "held-out row without reference answer",
    "invalid": "other schema error",
}
NORMALIZE_FIXES = {"nfc": "Unicode NFC", "control": "control characters", "whitespace": "trailing whitespace"}


# ---------------------------------------------------------------------------------------------------- rows


class Row:
    """One data row and where it came from."""

    __slots__ = ("src", "line", "data", "fmt", "group")

    def __init__(self, src: str, line: int, data: dict, fmt: str, group: str):
        self.src, self.line, self.data, self.fmt, self.group = src, line, data, fmt, group

    @property
    def where(self) -> str:
        return f"{self.src}:{self.line}"

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Row({self.where}, {self.group})"


@dataclass
class Problem:
    """One thing wrong with one row."""

    kind: str
    src: str
    line: int
    field: str | None
    message: str

    @property
    def where(self) -> str:
        return f"{self.src}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.field + ': ' if self.field else ''}{self.message}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "where": self.where, "field": self.field, "message": self.message}




# ----------------------------------------------------------------------------------------------- normalise

# normalize_text / normalize_value live in runner.formats (the derived defaults normalise rows too).


@dataclass
class NormStats:
    """How many rows normalisation changed, per fix, with example locations."""

    rows_changed: int = 0
    by_fix: dict = field(default_factory=lambda: {k: 0 for k in NORMALIZE_FIXES})
    examples: dict = field(default_factory=lambda: {k: [] for k in NORMALIZE_FIXES})

    def add(self, where: str, fixes: set):
        self.rows_changed += 1
        for f in fixes:
            self.by_fix[f] += 1
            if len(self.examples[f]) < MAX_SHOWN:
                self.examples[f].append(where)

    def merge(self, other: "NormStats"):
        self.rows_changed += other.rows_changed
        for f in NORMALIZE_FIXES:
            self.by_fix[f] += other.by_fix[f]
            self.examples[f] = (self.examples[f] + other.examples[f])[:MAX_SHOWN]

    def to_dict(self) -> dict:
        return {"rows_changed": self.rows_changed, "by_fix": dict(self.by_fix),
                "examples": {k: v for k, v in self.examples.items() if v}}


# ------------------------------------------------------------------------------------------------ validate


_type_name = type_name


def _schema_problem(err, fmt: str, row: dict) -> list[tuple[str, str | None, str]]:
    """(kind, field, message) for one jsonschema error on a row."""
    path = tuple(err.absolute_path)
    fld = keypath_str(path) if path else None
    v, inst = err.validator, err.instance
    if v == "required":
        hint = ""
        if not path:
            other = row_format(row, sharegpt_as_chat=False)
            if other and other != fmt:
                hint = f" (this row looks like {other} format, the block's is {fmt})"
            elif fmt == "chat" and "conversations" in row:
                hint = " (ShareGPT `conversations` rows are not supported: use messages with role/content)"
        return [("missing_field", keypath_str(path + (k,)), f"missing field '{k}'{hint}")
                for k in err.validator_value if k not in inst]
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        found = json.dumps(inst, ensure_ascii=False)[:60]
        return [("wrong_type", fld, f"expected {want}, found {_type_name(inst)} ({found})")]
    if v == "enum" and path and path[-1] == "role":
        return [("unknown_role", fld, f"unknown role {json.dumps(inst, ensure_ascii=False)} "
                                      f"(roles are {', '.join(ROLES)})")]
    if v in ("minLength", "pattern", "minItems"):
        return [("empty_field", fld, "empty" if v != "minItems" else "no messages")]
    return [("invalid", fld, err.message)]


def validate_row(row: dict, fmt: str, min_output_chars: int = 1) -> list[tuple[str, str | None, str]]:
    """Every problem of one (normalised) row as (kind, field, message); empty when the row is good."""
    errs = sorted(row_validator(fmt).iter_errors(row), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errs:
        out, seen = [], set()
        for e in errs:
            for p in _schema_problem(e, fmt, row):
                if (p[0], p[1]) not in seen:
                    seen.add((p[0], p[1]))
                    out.append(p)
        return out
    return content_problems(row, fmt, min_output_chars)


# ---------------------------------------------------------------------------------------------------- read


@dataclass
class FileResult:
    """The rows of one file that passed, the problems of those that did not, and normalisation counts."""

    src: str
    fmt: str
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    norm: NormStats = field(default_factory=NormStats)
    lines: int = 0
    invalid_rows: int = 0


def output_problems(row: dict, fmt: str, validator) -> list[tuple[str, str | None, str]]:
    """(kind, field, message) for each answer of a valid row that is not JSON satisfying `validator` (the
    block's output_schema): what a structured-output model must learn to produce, exactly (no code fence)."""
    out = []
    for fld, text in answers(row, fmt):
        try:
            value = json.loads(text)
        except ValueError as exc:
            out.append(("bad_output", fld, f"not JSON ({exc.msg} at character {exc.pos})"))
            continue
        err = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))), None)
        if err is not None:
            at = "/".join(map(str, err.absolute_path)) or "the top level"
            out.append(("bad_output", fld, f"does not match output_schema at {at}: {err.message[:200]}"))
    return out


def read_file(path: Path, src: str, fmt: str, group: str, min_output_chars: int = 1,
              reporter: Reporter = NULL_REPORTER, output_validator=None) -> FileResult:
    """Parse, normalise and validate every non-empty line of a JSON Lines file (with `output_validator`, every
    answer must be JSON it accepts)."""
    res = FileResult(src, fmt)
    fh = open_data(path, src)
    size = os.fstat(fh.fileno()).st_size
    advance = reporter.start(f"checking {src}", size)
    pending = 0
    with fh:
        for n, nbytes, row, problem in parsed_lines(fh):
            pending += nbytes
            if pending > 1 << 20:
                advance(pending)
                pending = 0
            res.lines += 1
            if problem is not None:
                res.invalid_rows += 1
                res.problems.append(Problem(problem[0], src, n, None, problem[1]))
                continue
            fixes: set = set()
            row = normalize_value(row, fixes)
            if fixes:
                res.norm.add(f"{src}:{n}", fixes)
            bad = validate_row(row, fmt, min_output_chars)
            if not bad and group == "held_out" and fmt == "chat" and row["messages"][-1]["role"] != "assistant":
                bad = [("no_reference", "messages", "a held-out conversation must end with the assistant's "
                                                    "reference answer")]
            if not bad and output_validator is not None:
                bad = output_problems(row, fmt, output_validator)
            if bad:
                res.invalid_rows += 1
                res.problems += [Problem(k, src, n, f, m) for k, f, m in bad]
                continue
            res.rows.append(Row(src, n, row, fmt, group))
    advance(pending)
    reporter.done()
    if not res.lines:
        raise empty_file_error(src)
    return res


# --------------------------------------------------------------------------------------------------- dedup


def dedup_text(row: Row) -> str:
    return "\n".join(t for _, t in turns(row.data, row.fmt))


def exact_text(row: Row) -> str:
    return "\x1f".join(f"{r}\x1e{t}" for r, t in turns(row.data, row.fmt))


@dataclass
class DedupResult:
    kept: list[Row]
    exact: list[dict]
    near: list[dict]
    leaks: list[dict]
    removed: dict


def _label(row: Row) -> str:
    return "held_out" if row.group == "held_out" else ("mix" if row.group.startswith("mix") else "train")


def deduplicate(rows: list[Row], exact: bool = True, near: bool = True, threshold: float = dedup.DEFAULT_THRESHOLD,
                shingle: int = dedup.DEFAULT_SHINGLE, reporter: Reporter = NULL_REPORTER) -> DedupResult:
    """Drop exact then near duplicates; rows come in priority order (held-out, train, mix) and the first row of
    every cluster is kept. A train or mix row that copies a held-out row is a leak and is always dropped."""
    removed = {"exact": 0, "near": 0, "held_out_leaks": 0, "mix": 0}
    out_exact, out_near, out_leaks = [], [], []
    drop: set[int] = set()

    def settle(cluster: list[int], kind: str, sim: float | None):
        keep = rows[cluster[0]]
        entry = {"kind": kind, "kept": keep.where, "rows": [rows[i].where for i in cluster]}
        if sim is not None:
            entry["similarity"] = sim
        is_leak = False
        for i in cluster[1:]:
            r = rows[i]
            if _label(keep) == "held_out" and _label(r) != "held_out":
                removed["held_out_leaks"] += 1
                is_leak = True
            else:
                removed[kind] += 1
            if _label(r) == "mix":
                removed["mix"] += 1
            drop.add(i)
        (out_leaks if is_leak else (out_exact if kind == "exact" else out_near)).append(entry)

    keys = [dedup.exact_key(exact_text(r)) for r in rows]
    for cluster in dedup.exact_clusters(keys):
        if exact or _label(rows[cluster[0]]) == "held_out":
            if not exact:  # only the leaks out of held-out
                cluster = [cluster[0]] + [i for i in cluster[1:] if _label(rows[i]) != "held_out"]
                if len(cluster) < 2:
                    continue
            settle(cluster, "exact", None)
    if near:
        remaining = [i for i in range(len(rows)) if i not in drop]
        advance = reporter.start("near-duplicates (MinHash)", len(remaining))
        clusters = dedup.near_clusters([dedup_text(rows[i]) for i in remaining], threshold, shingle=shingle,
                                       progress=advance)
        reporter.done()
        for members, sim in clusters:
            settle([remaining[i] for i in members], "near", sim)
    kept = [r for i, r in enumerate(rows) if i not in drop]
    return DedupResult(kept, out_exact, out_near, out_leaks, removed)


# --------------------------------------------------------------------------------------------------- split


def split_key(row: dict, seed: int) -> float:
    """A stable number in [0, 1) per row content: the split does not move when rows are reordered."""
    h = hashlib.sha256(f"{seed}:{json.dumps(row, sort_keys=True, ensure_ascii=False)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def seeded_split(rows: list, fraction: float, seed: int, key=lambda r: r) -> tuple[list, list]:
    """Split rows into (kept, taken) with ~fraction taken, deterministically by content; order is kept."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    ranked = sorted(range(len(rows)), key=lambda i: split_key(key(rows[i]), seed))
    n = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    taken = set(ranked[:n])
    return [r for i, r in enumerate(rows) if i not in taken], [r for i, r in enumerate(rows) if i in taken]


def take_sample(rows: list[Row], n: int, seed: int) -> list[Row]:
    """n rows chosen deterministically by content (file order kept)."""
    if n >= len(rows):
        return list(rows)
    ranked = sorted(range(len(rows)), key=lambda i: split_key(rows[i].data, seed))
    chosen = set(ranked[:n])
    return [r for i, r in enumerate(rows) if i in chosen]


# --------------------------------------------------------------------------------------------------- block


@dataclass
class BlockResult:
    """Everything the checks found for one data block, and the rows of each split."""

    name: str
    format: str
    kind: str
    policy: str
    splits: dict[str, list[Row]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    norm: NormStats = field(default_factory=NormStats)
    sources: dict = field(default_factory=dict)
    dedup: DedupResult | None = None
    split_info: dict = field(default_factory=dict)
    mix: dict = field(default_factory=dict)
    rows_in: int = 0
    invalid_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.policy == "fail" and bool(self.problems)

    def counts(self) -> dict:
        d = self.dedup.removed if self.dedup else {}
        return {
            "rows_in": self.rows_in,
            "invalid": self.invalid_rows,
            "dropped_invalid": self.invalid_rows if self.policy == "drop" else 0,
            "normalized": self.norm.rows_changed,
            "exact_duplicates": d.get("exact", 0),
            "near_duplicates": d.get("near", 0),
            "held_out_leaks": d.get("held_out_leaks", 0),
            **{k: len(v) for k, v in self.splits.items()},
            "mixed_in": sum(m["rows"] for m in self.mix.get("files", {}).values()),
            "rows_out": sum(len(v) for v in self.splits.values()),
        }

    def report(self) -> dict:
        probs = sorted(self.problems, key=lambda p: (p.src, p.line))
        by_kind: dict[str, int] = {}
        for p in probs:
            by_kind[p.kind] = by_kind.get(p.kind, 0) + 1
        dd = self.dedup
        out = {
            "format": self.format,
            "stage_kind": self.kind,
            "on_error": self.policy,
            "ok": not self.failed,
            "counts": self.counts(),
            "problems": {"count": len(probs), "by_kind": by_kind, "items": [p.to_dict() for p in probs[:MAX_LISTED]]},
            "normalization": self.norm.to_dict(),
            "dedup": {
                "exact": {"removed": dd.removed["exact"] if dd else 0, "clusters_total": len(dd.exact) if dd else 0,
                          "clusters": dd.exact[:MAX_LISTED] if dd else []},
                "near": {"removed": dd.removed["near"] if dd else 0, "clusters_total": len(dd.near) if dd else 0,
                         "clusters": dd.near[:MAX_LISTED] if dd else []},
                "held_out_leaks": {"removed": dd.removed["held_out_leaks"] if dd else 0,
                                   "clusters_total": len(dd.leaks) if dd else 0,
                                   "clusters": dd.leaks[:MAX_LISTED] if dd else []},
            },
            "split": self.split_info,
            "sources": self.sources,
        }
        if self.mix:
            out["mix"] = self.mix
        if self.notes:
            out["notes"] = self.notes
        return out


def file_format(path: Path, declared: str | None) -> str | None:
    return declared or detect_format(path)


def check_block(root: Path, name: str, block: dict, kind: str = "sft", validation_fraction: float = 0.0,
                reporter: Reporter = NULL_REPORTER, fmt: str | None = None, near_dedup: bool = True) -> BlockResult:
    """Run every check on one data block (paths relative to `root`) and split its rows. near_dedup=False skips
    the near-duplicate pass (what `validate` asks: the rows' validity, not the split `data check` writes)."""

    def resolve(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    train_files = block["train"] if isinstance(block["train"], list) else [block["train"]]
    fmt = fmt or block.get("format") or detect_format(resolve(train_files[0]))
    if fmt is None:
        raise TunebookError(f"cannot tell the data format of {train_files[0]} from its first row",
                            fix="Set data.format to alpaca, chat or preference.")
    policy = block.get("on_error", "fail")
    min_chars = block.get("min_output_chars", 1)
    seed = block.get("seed", DEFAULT_SEED)
    ddcfg = block.get("dedup") or {}
    br = BlockResult(name, fmt, kind, policy)

    output_validator = None
    if block.get("output_schema"):
        output_validator = schemafile.load_validator(resolve(block["output_schema"]), block["output_schema"])

    def load(f: str, ffmt: str, group: str) -> list[Row]:
        path = resolve(f)
        fr = read_file(path, f, ffmt, group, min_chars, reporter, output_validator)
        br.problems += fr.problems
        br.norm.merge(fr.norm)
        br.rows_in += fr.lines
        br.invalid_rows += fr.invalid_rows
        br.sources[f] = {"role": group, "format": ffmt, "rows": fr.lines, "valid": len(fr.rows),
                         "sha256": sha256_file(path)}
        return fr.rows

    train: list[Row] = []
    for f in train_files:
        train += load(f, fmt, "train")
    held: list[Row] | None = None
    if block.get("held_out"):
        hf = block["held_out"]
        copied = [f for f in train_files if br.sources[f]["sha256"] == sha256_file(resolve(hf))]
        if copied:
            # Scoring the model on the rows it trained on measures memorisation, not what it learned.
            raise TunebookError(
                f"the held-out file {hf} is the training file {copied[0]} (same content): the held-out score "
                "would only measure memorisation", where=hf,
                fix="Give held_out: a file of rows the model does not train on, or remove held_out: to split "
                    f"{DEFAULT_HELD_OUT_FRACTION:.0%} of the training rows off as held-out.")
        held = load(hf, detect_format(resolve(hf)) or fmt, "held_out")
    mixes = []
    for i, m in enumerate(block.get("mix") or []):
        if fmt == "preference":
            raise TunebookError(f"data.mix adds instruction data, but block '{name}' is preference pairs",
                                fix="Put mix: under the data block of the sft stage.")
        mfmt = file_format(resolve(m["file"]), m.get("format"))
        if mfmt not in ("alpaca", "chat"):
            raise TunebookError(f"mix file {m['file']} is not alpaca or chat rows",
                                fix="Set its format: (alpaca or chat), or use an instruction file.")
        mixes.append((m, load(m["file"], mfmt, f"mix:{m['file']}")))

    # Dedup across everything at once, held-out first so that its rows win every cluster.
    everything = (held or []) + train + [r for _, rows in mixes for r in rows]
    dd = deduplicate(everything, exact=ddcfg.get("exact", True), near=near_dedup and ddcfg.get("near", True),
                     threshold=ddcfg.get("threshold", dedup.DEFAULT_THRESHOLD),
                     shingle=ddcfg.get("shingle", dedup.DEFAULT_SHINGLE), reporter=reporter)
    br.dedup = dd
    kept_train = [r for r in dd.kept if r.group == "train"]
    kept_held = [r for r in dd.kept if r.group == "held_out"]

    if held is not None:
        br.split_info["held_out"] = {"source": block["held_out"], "rows": len(kept_held)}
    elif name == "main" and fmt != "preference":
        frac = block.get("held_out_fraction", DEFAULT_HELD_OUT_FRACTION)
        kept_train, kept_held = seeded_split(kept_train, frac, seed, key=lambda r: r.data)
        br.split_info["held_out"] = {"source": "split", "fraction": frac, "seed": seed, "rows": len(kept_held)}
        held = kept_held
    kept_train, val = seeded_split(kept_train, validation_fraction, seed + 1, key=lambda r: r.data)
    if validation_fraction:
        br.split_info["validation"] = {"fraction": validation_fraction, "seed": seed + 1, "rows": len(val)}

    mixed: list[Row] = []
    if mixes:
        total_frac = sum(m["fraction"] for m, _ in mixes)
        if total_frac >= 1:
            raise TunebookError("data.mix fractions add up to 1 or more", fix="Keep their sum below 0.5.")
        target_total = len(kept_train) / (1 - total_frac)
        files = {}
        for m, _ in mixes:
            avail = [r for r in dd.kept if r.group == f"mix:{m['file']}"]
            want = round(m["fraction"] * target_total)
            got = take_sample(avail, want, seed + 7)
            if len(got) < want:
                br.notes.append(f"mix {m['file']}: wanted {want} rows for {m['fraction']:.0%} but only "
                                f"{len(avail)} usable rows remain; used them all")
            files[m["file"]] = {"requested_fraction": m["fraction"], "available": len(avail), "rows": len(got)}
            mixed += got
        n_final = len(kept_train) + len(mixed)
        props = {"main": round(len(kept_train) / n_final, 4) if n_final else 0.0}
        for f, info in files.items():
            info["fraction"] = round(info["rows"] / n_final, 4) if n_final else 0.0
            props[f] = info["fraction"]
        br.mix = {"files": files, "proportions": props}

    br.splits["train"] = kept_train + mixed
    if val:
        br.splits["validation"] = val
    if held is not None:
        br.splits["held_out"] = held
    if br.failed:
        br.notes.append(f"on_error is fail: {br.invalid_rows} invalid row(s) stop the run")
    elif not br.splits["train"]:
        br.notes.append("no training rows are left after the checks")
    return br


def format_problems(problems: list[Problem], limit: int = MAX_SHOWN) -> str:
    probs = sorted(problems, key=lambda p: (p.src, p.line))
    lines = [f"  {p}" for p in probs[:limit]]
    if len(probs) > limit:
        lines.append(f"  ... and {len(probs) - limit} more")
    return "\n".join(lines)


def problem_counts(problems: list[Problem]) -> str:
    by_kind: dict[str, int] = {}
    for p in problems:
        by_kind[p.kind] = by_kind.get(p.kind, 0) + 1
    return ", ".join(f"{n} {PROBLEM_KINDS.get(k, k)}" for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1]))

"""Turn a recipe's data files into the files Axolotl trains on, under runs/<recipe>/data/<block>/.

Every block goes through the data checks of `runner.data.check` first: normalise (NFC, control characters,
trailing whitespace) → validate each row against its format's JSON Schema → drop exact and near duplicates
(before the split, so no near-copy of a training row lands in held-out) → seeded held-out / validation split
→ mix in general data. Rows are then converted to one shape per kind (chat `messages` for SFT; `messages` +
`chosen`/`rejected` for preference stages) with the recipe's system prompt, and written with their hashes.
Token lengths are measured with the recipe's real tokenizer and chat template. Everything found goes to
runs/<recipe>/data/report.json. The user's files are never modified.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from runner import formats, preference
from runner.chat_template import render as render_template
from runner.console import NULL_REPORTER, Reporter, say, terminal_reporter
from runner.data import check as datacheck
from runner.data import tokens as toklen
from runner.data.check import BlockResult, Row, seeded_split, split_key  # noqa: F401  (re-exported)
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json, atomic_write_text, sha256_file, sha256_json
from runner.recipe.load import data_files


@dataclass
class PreparedBlock:
    """The files made for one data block and their content hashes."""

    name: str
    dir: Path
    format: str
    files: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def convert(row: Row, split: str, system_prompt: str | None) -> dict:
    """A checked row in the shape its split is written in (`runner.formats.convert`)."""
    return formats.convert(row.data, row.fmt, split, system_prompt)


# ------------------------------------------------------------------------------------------------ checks


@dataclass
class BlockCheck:
    """One block: what the checks found, its converted splits, token stats, and the files written."""

    result: BlockResult
    rows: dict[str, list[dict]]
    tokens: dict | None = None
    prepared: PreparedBlock | None = None
    trainer_shape: dict | None = None  # a kto stage's desirable/undesirable balance
    origins: dict[str, list[str]] = field(default_factory=dict)  # file:line of each written row, where not 1:1


@dataclass
class DataCheck:
    """The data step of a recipe: every block checked, and the report written to report.json."""

    res: object
    blocks: dict[str, BlockCheck]
    report: dict
    report_path: Path

    @property
    def failed(self) -> bool:
        return any(b.result.failed for b in self.blocks.values())

    @property
    def problems(self) -> list:
        return [p for b in self.blocks.values() for p in b.result.problems]


def _stage_for(res, name: str):
    return next((s for s in res.stages if s.data_block == name and s.config), None)


def _tokenizer(res, tstage, cache: dict):
    """(TokenizerInfo, None) of a training stage, or (None, why not); loaded once per model and template."""
    key = (str(tstage.config.get("base_model")), str(tstage.config.get("chat_template_jinja")))
    if key not in cache:
        # The tokenizer is read with local_files_only (runner.data.tokens): nothing is downloaded here, and the
        # process environment is left alone, so the Axolotl processes the pipeline starts next can download a
        # hub model (HF_HUB_OFFLINE set here would reach them through runner.train.axolotl.child_env).
        cache[key] = toklen.load_tokenizer(res, tstage)
    return cache[key]


def _trainer_rows(res, bc: BlockCheck, stage, cache: dict) -> dict[str, list[dict]]:
    """The rows each split's file holds: the converted rows, except that a preference stage's training rows are
    written in the shape its method's trainer reads (`runner.preference`); a kto stage's are rendered with its
    chat template, so its tokenizer must be on this machine."""
    if stage is None or stage.kind not in preference.METHODS or bc.result.format != "preference":
        return bc.rows
    method = preference.METHODS[stage.kind]
    render = None
    if method.needs_template:
        info, _ = _tokenizer(res, stage, cache)
        if info is None:
            raise TunebookError(f"stage '{stage.name}' ({stage.kind}) trains on examples rendered with the model's "
                                f"chat template, and the tokenizer of {res.recipe.data['base_model']} is not on this "
                                "machine (the data step downloads nothing)",
                                where=res.recipe.where("stages", stage.index),
                                fix="Run `tunebook train` (it fetches a hub model first) or put the model's files "
                                    "at base_model, then prepare the data again.")
        tok, template = info.tokenizer, info.template
        render = lambda msgs, gen: render_template(tok, msgs, template, gen)  # noqa: E731
    out = dict(bc.rows)
    try:
        out["train"], sources = preference.trainer_rows(stage.kind, bc.rows.get("train", []), render)
    except ValueError as exc:
        raise TunebookError(f"stage '{stage.name}' ({stage.kind}): {exc}", where=res.recipe.where("stages", stage.index),
                            fix="Set a chat template whose prompt renders as the start of the conversation, e.g. "
                                "axolotl: {chat_template: chatml}.") from None
    train_from = bc.result.splits.get("train", [])
    bc.origins = {"train": [train_from[i].where for i in sources]}
    shape = preference.balance(stage.kind, out["train"])
    if shape:
        bc.result.notes.append(
            f"{len(bc.rows.get('train', []))} pairs written as {shape['desirable']} desirable and "
            f"{shape['undesirable']} undesirable examples (desirable:undesirable {shape['ratio']}:1)")
        bc.trainer_shape = {"method": stage.kind, **shape}
    return out


def _token_stats(res, name: str, bc: BlockCheck, stage, reporter: Reporter, cache: dict) -> dict:
    tstage = toklen.stage_for_block(res, name)
    if tstage is None:
        return {"skipped": "no training stage uses this block"}
    info, note = _tokenizer(res, tstage, cache)
    if info is None:
        return {"skipped": note}
    rows = bc.rows.get("train", []) + bc.rows.get("validation", [])
    origins = [r.where for r in bc.result.splits.get("train", []) + bc.result.splits.get("validation", [])]
    preference = bc.result.format == "preference"
    advance = reporter.start(f"token lengths ({name})", len(rows) * (2 if preference else 1))
    try:
        lengths = toklen.row_lengths(info.tokenizer, rows, info.template, preference, advance)
    except Exception as exc:  # noqa: BLE001 - a template that cannot render is reported, not fatal here
        return {"skipped": f"token lengths skipped: rendering with the chat template failed: {exc}"}
    finally:
        reporter.done()
    out = toklen.summarize(lengths, origins, len(bc.rows.get("train", [])), info.sequence_len,
                           info.excess_length_strategy, info.model_max)
    out["tokenizer"] = info.source
    out["chat_template"] = info.template_from
    out["stage"] = tstage.name
    return out


def _write_block(out_dir: Path, bc: BlockCheck, files: dict[str, list[dict]]) -> PreparedBlock:
    br = bc.result
    pb = PreparedBlock(br.name, out_dir, br.format)
    for split, rows in files.items():
        path = out_dir / f"{split}.jsonl"
        atomic_write_text(path, _jsonl(rows))
        pb.files[split], pb.counts[split], pb.hashes[split] = path, len(rows), sha256_file(path)
    for stale in ("validation", "held_out"):
        if stale not in files and (out_dir / f"{stale}.jsonl").exists():
            (out_dir / f"{stale}.jsonl").unlink()
    atomic_write_json(out_dir / "origins.json", {s: bc.origins.get(s) or [r.where for r in rows]
                                                 for s, rows in br.splits.items()})
    atomic_write_json(out_dir / "prepared.json", {"format": br.format, "counts": pb.counts, "hashes": pb.hashes})
    return pb


def run_checks(res, tokens: bool = True, write: bool = True, write_report: bool = True,
               reporter: Reporter | None = None, near_dedup: bool = True) -> DataCheck:
    """Check every data block of a resolved recipe; write the prepared files (only for blocks without failures)
    and report.json. Never raises for bad rows: the result says what failed. near_dedup=False: the rows'
    validity only (`validate`: fast, and the light image has no MinHash library)."""
    reporter = reporter or NULL_REPORTER
    rec = res.recipe
    system = rec.data.get("system_prompt")
    data_root = res.run_root / "data"
    blocks: dict[str, BlockCheck] = {}
    tok_cache: dict = {}
    for name, block in res.data_blocks.items():
        stage = _stage_for(res, name)
        kind = stage.kind if stage else "sft"
        fmt = formats.block_format(block, rec.root)
        if fmt is None:
            raise TunebookError("cannot tell the data format from the first row", where=rec.where("data", "train"),
                                fix="Set data.format to alpaca, chat or preference.")
        # The resolver decided the validation split (runner.recipe.resolve); the data step only carves it.
        fraction = stage.validation_fraction if stage is not None else 0.0
        br = datacheck.check_block(rec.root, name, block, kind, fraction, reporter, fmt, near_dedup)
        rows = {split: [convert(r, split, system) for r in rs] for split, rs in br.splits.items()}
        bc = BlockCheck(br, rows)
        if tokens:
            bc.tokens = _token_stats(res, name, bc, stage, reporter, tok_cache)
        if write and not br.failed and br.splits.get("train"):  # nothing trains on a block without rows
            bc.prepared = _write_block(data_root / name, bc, _trainer_rows(res, bc, stage, tok_cache))
        blocks[name] = bc
    report = build_report(res, blocks)
    dc = DataCheck(res, blocks, report, data_root / "report.json")
    if write_report:
        atomic_write_json(dc.report_path, report)
    if not dc.failed:
        no_rows_left(dc)
    return dc


def no_rows_left(dc: DataCheck) -> None:
    """Raise when a block has no training rows left after the checks (nothing would train), with why."""
    for name, bc in dc.blocks.items():
        if not bc.rows.get("train"):
            c = bc.result.counts()
            raise TunebookError(f"data block '{name}' has no training rows left after the checks "
                                f"({c['rows_in']} rows in, {c['invalid']} invalid, {c['exact_duplicates']} exact and "
                                f"{c['near_duplicates']} near duplicates, {c['held_out_leaks']} held-out leaks)",
                                where=str(dc.report_path) if dc.report_path.is_file() else None,
                                fix="Check the data files named in the recipe (a held-out file that repeats the "
                                    "training rows leaves nothing to train on).")


def build_report(res, blocks: dict[str, BlockCheck]) -> dict:
    root = res.recipe.root

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    out_blocks = {}
    for name, bc in blocks.items():
        b = bc.result.report()
        b["tokens"] = bc.tokens if bc.tokens is not None else {"skipped": "not computed"}
        if bc.trainer_shape:
            b["trainer_rows"] = bc.trainer_shape
        if bc.prepared:
            b["files"] = {s: {"path": rel(p), "rows": bc.prepared.counts[s], "sha256": bc.prepared.hashes[s]}
                          for s, p in bc.prepared.files.items()}
        out_blocks[name] = b
    main = blocks.get("main")
    tpe = (main.tokens or {}).get("tokens_per_epoch") if main else None
    ok = not any(b.result.failed for b in blocks.values())
    return {
        "recipe": res.recipe.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ok": ok,
        "tokens_per_epoch": tpe,
        "blocks": out_blocks,
    }


def failure(dc: DataCheck, report_written: bool = True) -> TunebookError:
    """The error that stops a run whose data has invalid rows under on_error: fail (`report_written`: whether
    report.json lists them, as after `data check` and the pipeline's data step; `validate` writes nothing)."""
    probs = [p for b in dc.blocks.values() if b.result.failed for p in b.result.problems]
    n_rows = sum(b.result.invalid_rows for b in dc.blocks.values() if b.result.failed)
    name = dc.res.recipe.name
    report = dc.report_path.relative_to(dc.res.recipe.root) if dc.report_path.is_relative_to(
        dc.res.recipe.root) else dc.report_path
    shown = min(len(probs), datacheck.MAX_SHOWN)
    # The fix goes inside the message: after a list, "(at ...)" and ". fix" would land on its last line.
    return TunebookError(
        f"{n_rows} invalid row{'s' if n_rows != 1 else ''} in the data ({datacheck.problem_counts(probs)}); "
        f"the first {shown}:\n{datacheck.format_problems(probs)}\n"
        f"Fix these rows, or set `on_error: drop` in the data block to train without them. "
        + (f"Every problem is listed in {report}; " if report_written else "")
        + f"`tunebook data check {name}` shows the full report.")


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def summary_lines(dc: DataCheck) -> list[str]:
    """A few lines for the pipeline log."""
    root = dc.res.recipe.root
    lines = []
    for name, bc in dc.blocks.items():
        c = bc.result.counts()
        parts = [f"{c['rows_in']} rows"]
        parts.append(", ".join(f"{c[s]} {s.replace('_', '-')}" for s in ("train", "validation", "held_out")
                               if s in c))
        removed = [_n(c[k], label) for k, label in (("invalid", "invalid row"), ("exact_duplicates", "exact duplicate"),
                                                     ("near_duplicates", "near duplicate"),
                                                     ("held_out_leaks", "held-out leak")) if c.get(k)]
        if c["normalized"]:
            removed.append(f"{_n(c['normalized'], 'row')} normalised")
        lines.append(f"data {name} ({bc.result.format}): " + " → ".join(parts[:2])
                     + (f"; {', '.join(removed)}" if removed else ""))
        t = bc.tokens or {}
        if "max" in t:
            lines.append(f"data {name}: tokens p50 {t['p50']}, p95 {t['p95']}, max {t['max']} "
                         f"(sequence_len {t['sequence_len']}); {t['tokens_per_epoch']:,} tokens per epoch; "
                         f"{t['advice']}")
        elif t.get("skipped"):
            lines.append(f"data {name}: {t['skipped']}")
        if bc.result.mix:
            props = ", ".join(f"{k} {v:.1%}" for k, v in bc.result.mix["proportions"].items())
            lines.append(f"data {name}: mix {props}")
        for note in bc.result.notes:
            lines.append(f"data {name}: {note}")
        if bc.result.policy == "drop" and bc.result.invalid_rows:
            first = sorted(bc.result.problems, key=lambda p: (p.src, p.line))[0]
            lines.append(f"data {name}: dropped {bc.result.invalid_rows} invalid row(s) (on_error: drop), "
                         f"first at {first.where}: {first.message}")
    lines.append(f"data report: {dc.report_path.relative_to(root) if dc.report_path.is_relative_to(root) else dc.report_path}")
    return lines


def prepare(res, quiet: bool = False, tokens: bool = True, write_report: bool = True,
            reporter: Reporter | None = None) -> dict[str, PreparedBlock]:
    """Check and prepare every data block a resolved recipe uses (the pipeline runs this before training).

    Invalid rows under `on_error: fail` (the default) stop here with a TunebookError listing them."""
    if reporter is None and not quiet:
        reporter = terminal_reporter()
    dc = run_checks(res, tokens=tokens, write=True, write_report=write_report, reporter=reporter)
    if dc.failed:
        raise failure(dc)
    no_rows_left(dc)
    if not quiet:
        for line in summary_lines(dc):
            say(line)
    return {name: bc.prepared for name, bc in dc.blocks.items()}


def source_hashes(res) -> dict[str, dict[str, str]]:
    """Per data block: content hash of each source file, plus a hash of the block's settings.

    These (not the prepared files) are what the lock compares, so `status` needs no preparation."""
    out = {}
    for name, block in res.data_blocks.items():
        h = {f: sha256_file(res.recipe.resolve_path(f)) for _, f in data_files(block)}
        h["settings"] = sha256_json({"block": block, "system_prompt": res.data.get("system_prompt")})
        out[name] = h
    return out

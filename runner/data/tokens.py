"""Token lengths of prepared rows, with the recipe's real tokenizer and chat template.

Reports p50/p95/max tokens, the rows longer than `sequence_len` (Axolotl drops or truncates them), a suggested
`sequence_len`, and the tokens in one epoch (what the planner needs). Never touches the network: a model that is
not on this machine is skipped with a note.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.chat_template import count_tokens, stage_template
from runner.recipe.derive import percentile as _percentile
from runner.recipe.derive import round_seq
from runner.recipe.load import TRAIN_KINDS, looks_like_path
from runner.tokenizer import has_tokenizer, load_tokenizer as load_shared_tokenizer

MAX_LISTED = 20


@dataclass
class TokenizerInfo:
    """A loaded tokenizer and the settings of the stage it is used for."""

    tokenizer: object
    source: str
    template: str | None
    template_from: str
    sequence_len: int
    excess_length_strategy: str
    model_max: int | None


def stage_for_block(res, name: str):
    """The first training stage that trains on a data block."""
    return next((s for s in res.stages if s.data_block == name and s.config and s.kind in TRAIN_KINDS), None)


def _model_max(p: Path) -> int | None:
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return None
    v = cfg.get("max_position_embeddings") or (cfg.get("text_config") or {}).get("max_position_embeddings")
    return int(v) if isinstance(v, int) else None


def load_tokenizer(res, stage) -> tuple[TokenizerInfo | None, str | None]:
    """The tokenizer a training stage uses, from disk only; (None, why) when it is not on this machine."""
    cfg = stage.config
    base = str(res.recipe.data["base_model"])
    candidates = [str(cfg.get("base_model") or base)]
    recipe_base = str(res.recipe.resolve_path(base)) if looks_like_path(base) else base
    if recipe_base not in candidates:
        candidates.append(recipe_base)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok, source, model_max = None, None, None
    for c in candidates:
        try:
            if looks_like_path(c) or Path(c).is_dir():
                p = Path(c)
                if p.is_dir() and has_tokenizer(p):
                    tok, source, model_max = load_shared_tokenizer(p), c, _model_max(p)
            else:
                # local_files_only, not HF_HUB_OFFLINE: no download, and the process environment is left alone
                tok, source = load_shared_tokenizer(c, local_only=True), c
        except Exception:  # noqa: BLE001 - any failure means "not usable offline"
            tok = None
        if tok is not None:
            break
    if tok is None:
        return None, (f"token lengths skipped: the tokenizer of {base} is not on this machine "
                      "(no download is attempted); they are computed once the model is there")
    # A template that cannot be found or rendered is an error (TunebookError), not a count with another one.
    template, origin = stage_template(cfg, tok, source)
    return TokenizerInfo(tok, source, template, origin, int(cfg.get("sequence_len") or 2048),
                         str(cfg.get("excess_length_strategy") or "drop"), model_max), None


def conversations(row: dict, preference: bool) -> list[list[dict]]:
    """The conversations one prepared row is trained as (two for a preference pair)."""
    if preference:
        return [row["messages"] + [{"role": "assistant", "content": row["chosen"]}],
                row["messages"] + [{"role": "assistant", "content": row["rejected"]}]]
    return [row["messages"]]


def row_lengths(tok, rows: list[dict], template: str | None, preference: bool = False,
                advance: Callable[[int], None] = lambda n: None) -> list[int]:
    convs, owner = [], []
    for i, r in enumerate(rows):
        for c in conversations(r, preference):
            convs.append(c)
            owner.append(i)
    lengths = [0] * len(rows)
    for i, n in zip(owner, count_tokens(tok, convs, template, advance)):
        lengths[i] = max(lengths[i], n)
    return lengths


def percentile(sorted_vals: list[int], q: float) -> int:
    """Nearest-rank percentile, the rule the derived defaults use (`runner.recipe.derive`)."""
    return _percentile(sorted_vals, q)


def suggest_sequence_len(longest: int, model_max: int | None = None) -> int:
    """The shortest sequence_len (a multiple of 64, at least 128) that fits the longest row."""
    s = round_seq(longest)
    return min(s, model_max) if model_max else s


def summarize(lengths: list[int], wheres: list[str], n_train: int, sequence_len: int,
              strategy: str = "drop", model_max: int | None = None) -> dict:
    """Statistics of token lengths; the first n_train rows are the training split (the rest validation)."""
    s = sorted(lengths)
    longest = s[-1] if s else 0
    over = [(w, n) for w, n in zip(wheres, lengths) if n > sequence_len]
    fate = {"drop": "drops", "truncate": "truncates", "raise": "stops with an error on"}.get(strategy, strategy)
    tpe = 0
    for n in lengths[:n_train]:
        tpe += n if n <= sequence_len else (sequence_len if strategy == "truncate" else 0)
    suggested = suggest_sequence_len(longest, model_max)
    if over:
        advice = (f"{len(over)} row{'s are' if len(over) != 1 else ' is'} longer than sequence_len "
                  f"{sequence_len}: Axolotl {fate} {'them' if len(over) != 1 else 'it'}")
        advice += (f"; sequence_len {suggested} fits every row" if not model_max or longest <= model_max else
                   f"; the model supports at most {model_max} tokens, shorten those rows")
    elif suggested < sequence_len // 2:
        advice = (f"the longest row is {longest} tokens: sequence_len {suggested} fits every row and needs "
                  f"less memory than {sequence_len} when batches are padded (no sample packing)")
    else:
        advice = f"sequence_len {sequence_len} fits every row"
    return {
        "rows": len(lengths),
        "p50": percentile(s, 0.5),
        "p95": percentile(s, 0.95),
        "max": longest,
        "mean": round(sum(s) / len(s), 1) if s else 0,
        "sequence_len": sequence_len,
        "excess_length_strategy": strategy,
        "over_sequence_len": len(over),
        "over_rows": [f"{w} ({n} tokens)" for w, n in over[:MAX_LISTED]],
        "suggested_sequence_len": suggested,
        "advice": advice,
        "tokens_per_epoch": tpe,
        "model_max_tokens": model_max,
    }

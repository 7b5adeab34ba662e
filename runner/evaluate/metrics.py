"""Held-out answer metrics: pure functions of (prediction, reference row), each in [0, 1].

- exact_match: normalised prediction == normalised reference (SQuAD normalisation: lower case, punctuation and
  the articles a/an/the removed, whitespace collapsed).
- f1: token-level F1 between the normalised prediction and reference (SQuAD).
- rouge_l: ROUGE-L F1 (longest common subsequence of normalised tokens).
- contains: the row's `key_fact` regex matches the prediction (case-insensitive); rows without one: the
  normalised reference occurs in the normalised prediction.
- json_valid: the prediction parses as JSON (a Markdown code fence around the whole answer is allowed).
- json_schema: the prediction parses as JSON and conforms to the recipe's JSON Schema (`eval.json_schema`).
- stops: the answer ended with the end-of-turn token before max_new_tokens (not a text metric; from generation).
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter

from runner import schemafile

TEXT_METRICS = ("exact_match", "f1", "rouge_l", "contains", "json_valid", "json_schema")
ALL_METRICS = TEXT_METRICS + ("stops",)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | set("‘’“”–—…")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.S)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = (text or "").lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    p, r = tokens(pred), tokens(ref)
    if not p and not r:
        return 1.0
    if not p or not r:
        return 0.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 over normalised tokens."""
    p, r = tokens(pred), tokens(ref)
    if not p and not r:
        return 1.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# A key_fact is the user's regex, searched in the model's answer: a pattern like (a|a)+$ backtracks exponentially
# on an answer that almost matches, so one search gets a time limit (`regex`, the engine transformers already
# brings, has one; `re` has none). The data check refuses patterns that do not compile.
KEY_FACT_SECONDS = 2.0


class KeyFactTimeout(ValueError):
    """A key_fact regex took longer than KEY_FACT_SECONDS on one answer."""


def contains(pred: str, ref: str, key_fact: str | None = None) -> float:
    if key_fact:
        import regex

        try:
            return float(regex.search(key_fact, pred or "", regex.IGNORECASE, timeout=KEY_FACT_SECONDS) is not None)
        except TimeoutError:
            raise KeyFactTimeout(f"the key_fact regex {key_fact[:60]!r} took over {KEY_FACT_SECONDS:g} s on one "
                                 f"answer of {len(pred or '')} characters (a repeat of alternatives that can match the "
                                 "same text, such as (a|a)+ or (\\w+\\s?)+, backtracks without end); write each "
                                 "repeated part so it matches one way, or use a plain phrase")
    n_ref = normalize(ref)
    return float(bool(n_ref) and f" {n_ref} " in f" {normalize(pred)} ")


def parse_json(pred: str):
    """(ok, value): the answer as JSON, allowing one Markdown code fence around it."""
    text = (pred or "").strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    try:
        return True, json.loads(text)
    except (ValueError, TypeError):
        return False, None


def json_valid(pred: str) -> float:
    return float(parse_json(pred)[0])


def schema_validator(schema: dict):
    """A jsonschema validator for the schema's declared draft (2020-12 when it declares none)."""
    return schemafile.compile_validator(schema)


def json_schema(pred: str, validator) -> float:
    ok, value = parse_json(pred)
    return float(ok and validator.is_valid(value))


def score(pred: str, ref: str, metrics, key_fact: str | None = None, validator=None) -> dict[str, float]:
    """Every requested text metric for one answer."""
    out = {}
    for m in metrics:
        if m == "exact_match":
            out[m] = exact_match(pred, ref)
        elif m == "f1":
            out[m] = token_f1(pred, ref)
        elif m == "rouge_l":
            out[m] = rouge_l(pred, ref)
        elif m == "contains":
            out[m] = contains(pred, ref, key_fact)
        elif m == "json_valid":
            out[m] = json_valid(pred)
        elif m == "json_schema":
            if validator is None:
                raise ValueError("json_schema needs a schema validator")
            out[m] = json_schema(pred, validator)
        elif m != "stops":
            raise ValueError(f"unknown metric {m}")
    return out


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the rows that have it."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out

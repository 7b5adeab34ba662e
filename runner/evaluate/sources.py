"""The eval stage of a merge recipe: the merged model scored on each source recipe's held-out set, and the drop
against the source's own score.

Each source's set is scored exactly as that source's eval stage scored its own model (runner.evaluate.stage: its
held-out rows and key_fact regexes, its metrics, max_new_tokens, batch size and limit, its trained chat template,
greedy decoding), so `drop = source - merged` compares like with like. The source's score is read from its eval
stage's metrics.json (None when it has no eval stage yet). The merge recipe's `eval.gates` apply to every source's
set. Writes predictions.jsonl (one row per source and held-out example) and metrics.json into the stage folder.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time

from runner.console import say
from runner.errors import TunebookError
from runner.evaluate import metrics as mx
from runner.evaluate.gates import GateFailed, check_gates, describe_gate, failed_gates
from runner.evaluate.generate import ModelSpec, backend_name
from runner.evaluate.stage import (
    answers,
    base_spec,
    eval_device,
    eval_rows,
    eval_template,
    load_schema_validator,
    metrics_for,
    score_rows,
    stage_settings,
)
from runner.fsutil import atomic_write_json, atomic_write_text, sha256_file
from runner.merge.config import source_reference
from runner.merge.inputs import source_eval_entry
from runner.recipe.shipped import has_model, last_training_stage


def source_eval_stage(src):
    """The stage whose settings score a source's held-out set: its last eval stage, else (a source that trains
    only) its last training stage viewed as the eval that would follow it."""
    ev, _ = source_eval_entry(src)
    if ev is not None:
        return ev
    train = last_training_stage(src.res, action="evaluate")
    return dataclasses.replace(train, upstream=train.name, data_block="main")


def source_score(src, held_sha: str) -> tuple[dict | None, str | None]:
    """(the source's own aggregate held-out scores from its metrics.json, or None; why there is none)."""
    ev, entry = source_eval_entry(src)
    if ev is None:
        return None, f"{src.name} has no eval stage"
    if not ev.paths.metrics.is_file() or not entry.get("output_hash"):
        return None, f"{src.name}'s eval stage has not run (make eval RECIPE={src.name})"
    m = json.loads(ev.paths.metrics.read_text())
    if (m.get("held_out") or {}).get("sha256") != held_sha:
        return None, f"{src.name}'s metrics.json scored another held-out file; re-run its eval"
    return m.get("tuned"), None


def _rel(res, p) -> str:
    return os.path.relpath(p, res.recipe.root)


def score_source(res, src, merged: ModelSpec, quiet: bool) -> tuple[dict, list[dict]]:
    """The merged model on one source's held-out set: (its metrics.json entry, its prediction rows)."""
    sres = src.res
    stage = source_eval_stage(src)
    settings = stage_settings(sres)
    validator = load_schema_validator(sres, settings)
    held_path, rows = eval_rows(sres, stage, settings)
    settings["metrics"] = metrics_for(sres, settings, rows)
    template, _ = eval_template(sres, stage, base_spec(sres))
    say(f"eval: {src.name}'s held-out set ({len(rows)} rows, its own metrics and chat template)")
    preds, backend = answers(merged, rows, template, settings, quiet)
    scores = score_rows(rows, preds, settings["metrics"], validator)
    merged_agg = mx.aggregate(scores)
    held_sha = sha256_file(held_path)
    own, why = source_score(src, held_sha)
    entry = {
        "model": source_reference(src), "weight": src.weight, "density": src.density,
        "held_out": {"file": _rel(res, held_path), "rows": len(rows), "sha256": held_sha},
        "settings": {"metrics": settings["metrics"], "max_new_tokens": settings["max_new_tokens"],
                     "batch_size": settings["batch_size"], "limit": settings.get("limit"),
                     "chat_template": "source's (from its training config)" if template else "tokenizer's"},
        "source": own, "source_metrics": None if own is None else _rel(res, source_eval_entry(src)[0].paths.metrics),
        "source_missing": why, "merged": merged_agg,
        "drop": ({k: own[k] - v for k, v in merged_agg.items() if k in own} if own else None),
        "backend": backend,
    }
    pred_rows = [{"source": src.name, "id": r["id"],
                  "prompt": next((m["content"] for m in reversed(r["conversation"]) if m["role"] == "user"), ""),
                  "reference": r["reference"], "key_fact": r.get("key_fact"), "merged": {**p, "scores": s}}
                 for r, p, s in zip(rows, preds, scores)]
    return entry, pred_rows


def source_gates(gates: dict, per_source: dict) -> list[dict]:
    """eval.gates checked on every source's set, named `<metric> on <source>`."""
    out = []
    for name, entry in per_source.items():
        for g in check_gates({"gates": gates, "forgetting": {}}, entry["merged"], None):
            out.append({**g, "gate": f"{g['gate']} on {name}", "source": name})
    return out


def run_sources_eval(res, stage, quiet: bool = False) -> dict:
    """Run a merge recipe's eval stage; returns the metrics dict (also written to <stage dir>/metrics.json). A
    failed gate raises GateFailed once predictions.jsonl and metrics.json are written."""
    t0 = time.time()
    merged_dir = res.stage(stage.upstream).paths.merged
    if not has_model(merged_dir):
        raise TunebookError(f"stage '{stage.name}': no merged model in {merged_dir}",
                            fix=f"Run `tunebook train {res.recipe.name}` (its mergekit stage makes it).")
    merged = ModelSpec(str(merged_dir), label="merged")
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    per_source, pred_rows = {}, []
    for src in res.merge.sources:
        entry, rows = score_source(res, src, merged, quiet)
        per_source[src.name] = entry
        pred_rows += rows
    gates = source_gates((res.data.get("eval") or {}).get("gates") or {}, per_source)
    result = {
        "recipe": res.recipe.name, "stage": stage.name, "kind": "merge",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _rel(res, merged_dir), "method": res.merge.method, "t": res.merge.t, "dtype": res.merge.dtype,
        "base_model": res.merge.base_model,
        "settings": {"decoding": "greedy", "backend": next(iter(per_source.values()))["backend"] if per_source
                     else backend_name(), "device": eval_device()},
        "sources": per_source, "gates": gates, "passed": not failed_gates(gates),
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(stage.paths.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pred_rows))
    atomic_write_json(stage.paths.metrics, result)
    print_summary(result)
    failed = failed_gates(gates)
    if failed:
        raise GateFailed(failed, where=_rel(res, stage.paths.metrics), report=_rel(res, res.layout.report))
    return result


def print_summary(m: dict) -> None:
    say(f"eval: the merged model ({m['method']}) on each source's held-out set      source   merged     drop")
    for name, e in m["sources"].items():
        own = e["source"] or {}
        for k, v in e["merged"].items():
            s = own.get(k)
            say(f"  {name + ' ' + k:<40} {'' if s is None else f'{s:6.3f}':>6}   {v:6.3f}   "
                f"{'' if s is None else f'{s - v:+.3f}'}")
        if e.get("source_missing"):
            say(f"  ({e['source_missing']}: no source score to compare with)")
    for g in m["gates"]:
        say(f"  gate {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({describe_gate(g)})")

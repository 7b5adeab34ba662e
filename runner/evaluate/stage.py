"""The eval stage: held-out answers from the base and the fine-tuned model, metrics, a forgetting check with
lm-evaluation-harness, gates, and the report.

Writes into the stage folder (runs/<recipe>/<stage>/): predictions.jsonl (one row per held-out example, both
models' answers and scores) and metrics.json (aggregates, forgetting, gates). The base model's answers and scores
are cached in runs/<recipe>/eval/base_*.json, keyed by the base model, the held-out file and the settings, so a
re-run after more training only generates with the fine-tuned model. A failed gate raises GateFailed after
everything is written, so the pipeline stops before the stages that would ship the model.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

from runner.evaluate import metrics as mx
from runner.errors import TunebookError
from runner.fsutil import atomic_write_json, atomic_write_text, sha256_file, sha256_json, sha256_tree
from runner.evaluate.generate import ModelSpec, backend_name, generate, model_fingerprint, say
from runner.recipe.load import TRAIN_KINDS, looks_like_path

DEFAULTS = {"max_new_tokens": 64, "batch_size": 8, "compare_base": True}
DEFAULT_METRICS = ("exact_match", "f1", "rouge_l")
CACHE_ENTRIES = 8


class GateFailed(TunebookError):
    """One or more eval gates failed (exit code 1). `failed`: one line per failed gate (metric, value,
    threshold); `gates`: the same as dicts, as in metrics.json; `gate_failed` tells the pipeline to mark the lock."""

    gate_failed = True

    def __init__(self, failed: list[dict], where: str | None = None, recorded: str | None = None,
                 report: str | None = None):
        self.gates = failed
        self.failed = [describe_gate(g) for g in failed]
        what = "eval gate failed: " + "; ".join(self.failed)
        if recorded:
            what += f" (recorded {recorded}; inputs unchanged since)"
        fix = ("The pipeline stopped at the eval stage: the stages after it (merge, export, serve) did not run. "
               f"Read {report or 'the report (runs/<recipe>/report.md)'}, then improve the data or training, "
               "or change eval.gates in the recipe.")
        super().__init__(what, where=where, fix=fix, exit_code=1)

    @classmethod
    def from_metrics(cls, path: Path, recorded: str | None = None) -> "GateFailed | None":
        """The failure recorded in a metrics.json, or None when its gates passed."""
        data = json.loads(Path(path).read_text())
        failed = [g for g in data.get("gates", []) if not g.get("passed")]
        return cls(failed, where=str(path), recorded=recorded) if failed else None


def describe_gate(g: dict) -> str:
    if g.get("kind") == "forgetting":
        moved = f"dropped {g['value']:.1f} points" if g["value"] >= 0 else f"rose {-g['value']:.1f} points"
        return (f"forgetting on {g['task']}: {g['metric']} {moved} ({g['base']:.1f} -> {g['tuned']:.1f}), "
                f"allowed drop {g['threshold']:g}")
    return f"held-out {g['gate']} = {g['value']:.3f}, needs >= {g['threshold']:g}"


# ---------------------------------------------------------------------------------------------- settings


def eval_settings(res) -> dict:
    ev = dict(res.data.get("eval") or {})
    out = {**DEFAULTS, **{k: v for k, v in ev.items() if k in DEFAULTS or k == "limit"}}
    gates = dict(ev.get("gates") or {})
    forgetting = dict(ev.get("forgetting") or {})
    metrics = list(ev.get("metrics") or DEFAULT_METRICS)
    # A gate on a metric the recipe didn't list still needs that metric computed.
    for g in gates:
        if g in mx.TEXT_METRICS and g not in metrics:
            metrics.append(g)
    out.update(metrics=metrics, gates=gates, forgetting=forgetting, json_schema=ev.get("json_schema"))
    return out


def metrics_for(res, settings: dict, rows: list[dict]) -> list[str]:
    """The metrics to score: the recipe's list, or the defaults plus `contains` when the held-out rows name
    their key fact (they are asking to be scored on it)."""
    metrics = list(settings["metrics"])
    if not (res.data.get("eval") or {}).get("metrics") and "contains" not in metrics \
            and any(r.get("key_fact") for r in rows):
        metrics.append("contains")
    return metrics


def _where(res, *keys) -> str:
    try:
        return res.recipe.where(*keys)
    except Exception:
        return str(res.recipe.path)


def load_schema_validator(res, settings):
    if "json_schema" not in settings["metrics"]:
        return None
    path = settings.get("json_schema")
    if not path:
        raise TunebookError("eval.metrics lists json_schema but no schema file is given",
                            where=_where(res, "eval", "metrics"),
                            fix="Add `json_schema: path/to/schema.json` under eval:")
    p = res.recipe.resolve_path(path)
    try:
        schema = json.loads(p.read_text())
        return mx.schema_validator(schema)
    except FileNotFoundError:
        raise TunebookError(f"eval.json_schema: file '{path}' not found", where=_where(res, "eval", "json_schema"),
                            fix="Paths are relative to the project root.") from None
    except ValueError as exc:
        raise TunebookError(f"eval.json_schema: '{path}' is not valid JSON: {exc}",
                            where=_where(res, "eval", "json_schema")) from None
    except Exception as exc:  # jsonschema.SchemaError
        raise TunebookError(f"eval.json_schema: '{path}' is not a valid JSON Schema: "
                            f"{getattr(exc, 'message', exc)}", where=_where(res, "eval", "json_schema")) from None


def held_out_rows(res, stage, settings) -> tuple[Path, list[dict]]:
    """(prepared held-out file, rows as {id, conversation, reference, key_fact})."""
    path = res.run_root / "data" / (stage.data_block or "main") / "held_out.jsonl"
    if not path.is_file():
        raise TunebookError(f"stage '{stage.name}': there is no held-out data to evaluate on ({path} is missing)",
                            where=_where(res, "data"),
                            fix="Give data.held_out (a file never trained on) or a held_out_fraction above 0.")
    system = res.data.get("system_prompt")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if "messages" in r:
            msgs = r["messages"]
            if not msgs or msgs[-1].get("role") != "assistant":
                raise TunebookError("a held-out row must end with the assistant's reference answer",
                                    where=f"{path}:{n}")
            conv, ref = msgs[:-1], msgs[-1]["content"]
        elif "prompt" in r and "chosen" in r:  # preference rows: the chosen answer is the reference
            conv = ([{"role": "system", "content": r.get("system") or system}] if (r.get("system") or system)
                    else []) + [{"role": "user", "content": r["prompt"]}]
            ref = r["chosen"]
        else:
            raise TunebookError("held-out row has neither messages nor prompt/chosen", where=f"{path}:{n}")
        rows.append({"id": str(r.get("id", f"row-{len(rows) + 1}")), "conversation": conv, "reference": ref,
                     "key_fact": r.get("key_fact")})
    if settings.get("limit"):
        rows = rows[: settings["limit"]]
    return path, rows


# ---------------------------------------------------------------------------------------------- models


def _stage(res, name):
    return next(s for s in res.stages if s.name == name)


def _has_model(d: Path) -> bool:
    return (d / "config.json").is_file() and (any(d.glob("*.safetensors")) or any(d.glob("*.bin")))


def tuned_spec(res, stage) -> ModelSpec:
    """The fine-tuned model: a merged copy when one exists, else base + the LoRA adapter, else the full model."""
    if not stage.upstream:
        raise TunebookError(f"stage '{stage.name}': no training stage before it, nothing to evaluate")
    up = _stage(res, stage.upstream)
    adapter = bool(up.config.get("adapter"))
    hint = (f"Stage '{up.name}' has not produced a model yet: run `make train RECIPE={res.recipe.name}` "
            f"(or `tunebook train {res.recipe.name}`) first")
    if adapter and not (up.output_dir / "adapter_config.json").is_file():
        raise TunebookError(f"no trained adapter in {up.output_dir}", fix=hint)
    for s in res.stages:
        if s.kind == "merge" and s.upstream == up.name and s.index < stage.index and _has_model(s.run_dir / "merged"):
            return ModelSpec(str(s.run_dir / "merged"), label="fine-tuned")
    if _has_model(up.run_dir / "merged"):
        return ModelSpec(str(up.run_dir / "merged"), label="fine-tuned")
    if adapter:
        return ModelSpec(str(up.config["base_model"]), adapter=str(up.output_dir), label="fine-tuned")
    if not _has_model(up.output_dir):
        raise TunebookError(f"no trained model in {up.output_dir}", fix=hint)
    return ModelSpec(str(up.output_dir), label="fine-tuned")


def base_spec(res) -> ModelSpec:
    first = next((s for s in res.stages if s.kind in TRAIN_KINDS and s.config), None)
    base = first.config["base_model"] if first else res.data["base_model"]
    if looks_like_path(str(base)):
        base = str(res.recipe.resolve_path(str(base)))
    return ModelSpec(str(base), label="base")


def training_config(res, stage) -> dict:
    if stage.upstream:
        return _stage(res, stage.upstream).config or {}
    return next((s.config for s in res.stages if s.config), {}) or {}


def chat_template(config: dict, tok) -> str | None:
    """The chat template training used (None: the tokenizer's own)."""
    jinja = config.get("chat_template_jinja")
    if jinja:
        return Path(jinja).read_text() if len(jinja) < 4096 and Path(jinja).is_file() else jinja
    choice = config.get("chat_template")
    if not choice or choice in ("tokenizer_default", "jinja"):
        return None
    try:
        from axolotl.utils.chat_templates import get_chat_template

        return get_chat_template(choice, None, tok)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- caching


def _cache_get(path: Path, key: str):
    try:
        return json.loads(path.read_text()).get("entries", {}).get(key)
    except (OSError, ValueError):
        return None


def _cache_put(path: Path, key: str, value) -> None:
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError):
        entries = {}
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > CACHE_ENTRIES:
        entries.pop(next(iter(entries)))
    atomic_write_json(path, {"entries": entries})


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("transformers", "torch", "peft", "lm_eval", "vllm"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


# ---------------------------------------------------------------------------------------------- the stage


def answers(spec: ModelSpec, rows, template, settings, quiet) -> tuple[list[dict], str]:
    say(f"eval: answering {len(rows)} held-out prompts with the {spec.label} model ({spec.describe()})")
    return generate(spec, [r["conversation"] for r in rows], template, settings["max_new_tokens"],
                    settings["batch_size"], quiet=quiet)


def score_rows(rows, preds, metric_names, validator) -> list[dict]:
    out = []
    for r, p in zip(rows, preds):
        s = mx.score(p["text"], r["reference"], metric_names, r.get("key_fact"), validator)
        s["stops"] = float(p["stopped"])
        out.append(s)
    return out


def open_tasks(res, settings):
    """The lm-eval tasks of eval.forgetting, checked up front (names, datasets), or None."""
    tasks = list(settings["forgetting"].get("tasks") or [])
    if not tasks:
        return None
    from runner.evaluate import forgetting as fz

    session = fz.TaskSession(res.recipe.root, tasks)
    try:
        session.check_datasets()
    except BaseException:
        session.close()
        raise
    return session


def forgetting_check(session, settings, base: ModelSpec, tuned: ModelSpec, cache_dir: Path,
                     quiet: bool) -> dict | None:
    if session is None:
        return None
    from runner.evaluate import forgetting as fz

    fg = settings["forgetting"]
    tasks, limit = session.tasks, fg.get("limit")
    t0 = time.time()
    say(f"eval: forgetting check with lm-evaluation-harness on {', '.join(tasks)}"
        + (f" (limit {limit} per task)" if limit else ""))
    task_hash = sha256_json({d.name: sha256_tree(d) for d in session.tmp.iterdir()} | {
        "data": _referenced_data_hash(session.tmp)})
    batch = settings["batch_size"]
    key = sha256_json({"model": model_fingerprint(base.path), "tasks": tasks, "limit": limit,
                       "task_files": task_hash, "device": _device(), "versions": _versions(), "batch": batch})
    cache = cache_dir / "base_forgetting.json"
    base_scores = _cache_get(cache, key)
    if base_scores is None:
        base_scores = fz.evaluate_model(base, session, limit, batch, quiet)
        _cache_put(cache, key, base_scores)
    else:
        say("eval: base model's benchmark scores from cache (base_forgetting.json)")
    tuned_scores = fz.evaluate_model(tuned, session, limit, batch, quiet)
    return {"tasks": fz.compare(base_scores, tuned_scores, fg.get("max_drop")), "limit": limit,
            "seconds": round(time.time() - t0, 1)}


def _referenced_data_hash(tmp: Path) -> str:
    """Hash of the local data files the materialised task YAMLs point at (absolute paths)."""
    import re

    files = set()
    for y in tmp.rglob("*.y*ml"):
        for m in re.finditer(r"(/[^\s'\"]+\.(?:jsonl|json|csv|parquet|txt|tsv))", y.read_text()):
            if Path(m.group(1)).is_file():
                files.add(m.group(1))
    return sha256_json({f: sha256_file(f) for f in sorted(files)})


def check_gates(settings, tuned_agg: dict, forgetting: dict | None) -> list[dict]:
    gates = settings["gates"]
    out = []
    for name, thr in gates.items():
        if name == "forgetting":
            continue
        value = tuned_agg.get(name)
        out.append({"gate": name, "kind": "held_out", "value": value, "threshold": thr,
                    "passed": value is not None and value >= thr - 1e-12})
    # Forgetting limits gate by default once max_drop is given; `gates: {forgetting: false}` makes them advisory.
    if forgetting and gates.get("forgetting", bool(settings["forgetting"].get("max_drop"))):
        for task, row in forgetting["tasks"].items():
            if row.get("max_drop") is None or row.get("drop") is None:
                continue
            out.append({"gate": f"forgetting:{task}", "kind": "forgetting", "task": task, "metric": row["metric"],
                        "value": row["drop"], "threshold": row["max_drop"], "base": row["base"],
                        "tuned": row["tuned"], "passed": bool(row["ok"])})
    return out


def run_eval_stage(res, stage, quiet: bool = False) -> dict:
    """Run one eval stage; returns the metrics dict (also written to <stage dir>/metrics.json)."""
    t0 = time.time()
    settings = eval_settings(res)
    if settings["gates"].get("forgetting") and not settings["forgetting"].get("tasks"):
        raise TunebookError("eval.gates.forgetting is set but eval.forgetting lists no tasks",
                            where=_where(res, "eval", "gates", "forgetting"),
                            fix="Add e.g. `forgetting: {tasks: [general_knowledge], max_drop: {general_knowledge: 5}}`")
    validator = load_schema_validator(res, settings)
    held_path, rows = held_out_rows(res, stage, settings)
    held_gates = [g for g in settings["gates"] if g != "forgetting"]
    if not rows:
        if held_gates or not settings["forgetting"].get("tasks"):
            raise TunebookError(f"stage '{stage.name}': there are no held-out rows to evaluate on "
                                f"({held_path} is empty)", where=_where(res, "data"),
                                fix="Give data.held_out (a file never trained on) or a held_out_fraction above 0.")
        say("eval: no held-out rows; only the forgetting check runs")
    tuned = tuned_spec(res, stage)
    base = base_spec(res)
    cfg = training_config(res, stage)

    from runner.evaluate.generate import load_tokenizer

    base_tok = load_tokenizer(base)
    template = chat_template(cfg, base_tok)
    effective_template = template or base_tok.chat_template
    if not effective_template:
        raise TunebookError(f"the tokenizer of {base.path} has no chat template",
                            fix="Set one in the recipe: axolotl: {chat_template: chatml}")
    metric_names = settings["metrics"] = metrics_for(res, settings, rows)
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = res.run_root / "eval"
    backend = backend_name()

    session = open_tasks(res, settings)  # unknown tasks and unreachable datasets fail before any generation
    try:
        # Base model answers (cached).
        base_preds = None
        if settings["compare_base"] and rows:
            key = sha256_json({"model": model_fingerprint(base.path), "held_out": sha256_file(held_path),
                               "limit": settings.get("limit"), "max_new_tokens": settings["max_new_tokens"],
                               "batch_size": settings["batch_size"], "template": effective_template,
                               "backend": backend, "device": _device(), "versions": _versions()})
            cache = cache_dir / "base_predictions.json"
            base_preds = _cache_get(cache, key)
            if base_preds is None:
                base_preds, _ = answers(base, rows, template, settings, quiet)
                _cache_put(cache, key, base_preds)
            else:
                say("eval: base model's answers from cache (base_predictions.json)")
        tuned_preds, backend = answers(tuned, rows, template, settings, quiet) if rows else ([], backend)
        forgetting = forgetting_check(session, settings, base, tuned, cache_dir, quiet)
    finally:
        if session is not None:
            session.close()

    tuned_scores = score_rows(rows, tuned_preds, metric_names, validator)
    base_scores = score_rows(rows, base_preds, metric_names, validator) if base_preds is not None else None
    tuned_agg = mx.aggregate(tuned_scores)
    base_agg = mx.aggregate(base_scores) if base_scores is not None else None

    gates = check_gates(settings, tuned_agg, forgetting)
    failed = [g for g in gates if not g["passed"]]

    pred_rows = []
    for i, r in enumerate(rows):
        pred_rows.append({
            "id": r["id"], "prompt": next((m["content"] for m in reversed(r["conversation"]) if m["role"] == "user"), ""),
            "reference": r["reference"], "key_fact": r.get("key_fact"),
            "base": ({**base_preds[i], "scores": base_scores[i]} if base_preds is not None else None),
            "tuned": {**tuned_preds[i], "scores": tuned_scores[i]},
        })
    atomic_write_text(stage.run_dir / "predictions.jsonl",
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pred_rows))
    result = {
        "recipe": res.recipe.name, "stage": stage.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": {"base": base.describe(), "tuned": tuned.describe()},
        "held_out": {"file": str(held_path.relative_to(res.run_root)), "rows": len(rows),
                     "sha256": sha256_file(held_path)},
        "settings": {"metrics": metric_names, "max_new_tokens": settings["max_new_tokens"],
                     "batch_size": settings["batch_size"], "limit": settings.get("limit"), "decoding": "greedy",
                     "backend": backend, "device": _device(),
                     "chat_template": "recipe's (from training config)" if template else "tokenizer's"},
        "base": base_agg, "tuned": tuned_agg,
        "delta": ({k: tuned_agg[k] - base_agg[k] for k in tuned_agg if k in base_agg} if base_agg else None),
        "forgetting": forgetting,
        "gates": gates,
        "passed": not failed,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(stage.run_dir / "metrics.json", result)
    print_summary(result)
    try:
        from runner.pipeline.report import report_for

        path = report_for(res)
        say(f"eval: report at {path}")
    except Exception as exc:  # the gates must still be honoured if plotting breaks
        say(f"warning: the report could not be written ({type(exc).__name__}: {exc}); "
            f"run `tunebook report {res.recipe.name}` to retry")
    track(res, stage, result, pred_rows)
    if failed:
        rel = lambda p: os.path.relpath(p, res.recipe.root)
        raise GateFailed(failed, where=rel(stage.run_dir / "metrics.json"), report=rel(res.run_root / "report.md"))
    return result


def print_summary(m: dict) -> None:
    base, tuned = m.get("base") or {}, m["tuned"]
    say(f"eval: held-out results ({m['held_out']['rows']} rows)     base   fine-tuned   change")
    for k, v in tuned.items():
        b = base.get(k)
        say(f"  {k:<28} {'' if b is None else f'{b:6.3f}':>6}   {v:10.3f}   "
            f"{'' if b is None else f'{v - b:+.3f}'}")
    for task, row in ((m.get("forgetting") or {}).get("tasks") or {}).items():
        allowed = f", allowed {row['max_drop']:g}" if row.get("max_drop") is not None else ""
        say(f"  forgetting {task} ({row['metric']}): {row['base']:.1f} -> {row['tuned']:.1f} points "
            f"(drop {row.get('drop', 0):.1f}{allowed})")
    for g in m["gates"]:
        say(f"  gate {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({describe_gate(g)})")


def track(res, stage, result: dict, pred_rows: list[dict]) -> None:
    """Send the eval results to the recipe's tracker (wandb offline unless WANDB_MODE says otherwise)."""
    tracking = res.data.get("tracking", "none")
    if tracking == "none":
        return
    flat = {f"{who}/{k}": v for who in ("base", "tuned") for k, v in (result.get(who) or {}).items()}
    for task, row in ((result.get("forgetting") or {}).get("tasks") or {}).items():
        flat[f"forgetting/{task}/base"], flat[f"forgetting/{task}/tuned"] = row["base"], row["tuned"]
    flat["gates/passed"] = int(result["passed"])
    try:
        if tracking == "wandb":
            import wandb

            run = wandb.init(project=f"tunebook-{res.recipe.name}", group=res.recipe.name, job_type=stage.name,
                             name=f"{res.recipe.name}-{stage.name}", mode=os.environ.get("WANDB_MODE", "offline"),
                             dir=str(res.run_root), config={"eval": result["settings"]})
            table = wandb.Table(columns=["id", "prompt", "reference", "base", "tuned"])
            for p in pred_rows:
                table.add_data(p["id"], p["prompt"], p["reference"], (p["base"] or {}).get("text"), p["tuned"]["text"])
            run.log({**flat, "predictions": table})
            run.summary.update(flat)
            run.finish()
        elif tracking == "mlflow":
            import mlflow

            mlflow.set_experiment(f"tunebook-{res.recipe.name}")
            with mlflow.start_run(run_name=f"{res.recipe.name}-{stage.name}",
                                  tags={"group": res.recipe.name, "job_type": stage.name}):
                mlflow.log_metrics({k.replace("/", "."): float(v) for k, v in flat.items() if v is not None})
                mlflow.log_artifact(str(stage.run_dir / "metrics.json"))
    except ImportError:
        say(f"warning: tracking: {tracking} is set but the {tracking} package is not installed; results are in "
            f"{stage.run_dir / 'metrics.json'}")
    except Exception as exc:  # a tracker outage must not fail an evaluated run
        say(f"warning: could not log the eval results to {tracking}: {type(exc).__name__}: {exc}")

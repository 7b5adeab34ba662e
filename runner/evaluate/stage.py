"""The eval stage: held-out answers from the base and the fine-tuned model, metrics, a forgetting check with
lm-evaluation-harness, and gates (runner.evaluate.gates).

Writes into the stage folder (runs/<recipe>/<stage>/): predictions.jsonl (one row per held-out example, both
models' answers and scores) and metrics.json (aggregates, forgetting, gates). The base model's answers and scores
are cached in runs/<recipe>/eval/base_*.json, keyed by the base model, the held-out file and the settings, so a
re-run after more training only generates with the fine-tuned model. A failed gate raises GateFailed after
everything is written, so the pipeline stops before the stages that would ship the model. The report is the
pipeline's: it writes it from what this stage wrote.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from runner import schemafile
from runner.chat_template import stage_template
from runner.console import say
from runner.errors import TunebookError
from runner.evaluate import forgetting as fz
from runner.evaluate import metrics as mx
from runner.evaluate.gates import GateFailed, check_gates, describe_gate, failed_gates
from runner.evaluate.generate import ModelSpec, backend_name, generate, model_fingerprint
from runner.formats import prompt_turns
from runner.fsutil import atomic_write_json, atomic_write_text, sha256_file, sha256_json, sha256_tree
from runner.layout import StageLayout
from runner.recipe.load import looks_like_path
from runner.recipe.shipped import has_model, shipped_model, training_stages
from runner.tokenizer import load_tokenizer

DEFAULTS = {"max_new_tokens": 64, "batch_size": 8, "compare_base": True}
DEFAULT_METRICS = ("exact_match", "f1", "rouge_l")
CACHE_ENTRIES = 8


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
    try:
        return schemafile.load_validator(res.recipe.resolve_path(path), path)
    except TunebookError as exc:
        raise TunebookError(f"eval.json_schema: {exc.what}", where=_where(res, "eval", "json_schema")) from None


def held_out_rows(res, stage, settings) -> tuple[Path, list[dict]]:
    """(prepared held-out file, rows as {id, conversation, reference, key_fact})."""
    path = res.layout.data_file(stage.data_block or "main", "held_out")
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
        if "chosen" in r and ("prompt" in r or "messages" in r):  # preference rows: chosen is the reference
            conv, ref = prompt_turns(r, system), r["chosen"]
        elif "messages" in r:
            msgs = r["messages"]
            if not msgs or msgs[-1].get("role") != "assistant":
                raise TunebookError("a held-out row must end with the assistant's reference answer",
                                    where=f"{path}:{n}")
            conv, ref = msgs[:-1], msgs[-1]["content"]
        else:
            raise TunebookError("held-out row has neither messages nor prompt/chosen", where=f"{path}:{n}")
        rows.append({"id": str(r.get("id", f"row-{len(rows) + 1}")), "conversation": conv, "reference": ref,
                     "key_fact": r.get("key_fact")})
    if settings.get("limit"):
        rows = rows[: settings["limit"]]
    return path, rows


# ---------------------------------------------------------------------------------------------- models


def tuned_spec(res, stage) -> ModelSpec:
    """The fine-tuned model (runner.recipe.shipped: what the last training stage before this one made): a merged
    copy when one exists, else base + the LoRA adapter, else the full model."""
    if not training_stages(res, before=stage.index):
        raise TunebookError(f"stage '{stage.name}': no training stage before it, nothing to evaluate")
    model = shipped_model(res, before=stage.index, action="evaluate")
    up = model.stage
    hint = (f"Stage '{up.name}' has not produced a model yet: run `make train RECIPE={res.recipe.name}` "
            f"(or `tunebook train {res.recipe.name}`) first")
    if model.adapter is not None and not (model.adapter / "adapter_config.json").is_file():
        raise TunebookError(f"no trained adapter in {model.adapter}", fix=hint)
    four_bit = bool(up.config.get("load_in_4bit"))  # evaluate in the bits it trained in (runner.evaluate.generate)
    if model.merged is not None and has_model(model.merged):
        return ModelSpec(str(model.merged), label="fine-tuned", load_in_4bit=four_bit)
    if model.adapter is not None:
        return ModelSpec(model.base, adapter=str(model.adapter), label="fine-tuned", load_in_4bit=four_bit)
    raise TunebookError(f"no trained model in {up.output_dir}", fix=hint)


def base_spec(res) -> ModelSpec:
    """The model before fine-tuning: the first training stage's base (the recipe's base_model)."""
    first = next(iter(training_stages(res)), None)
    base = first.config["base_model"] if first else res.data["base_model"]
    if looks_like_path(str(base)):
        base = str(res.recipe.resolve_path(str(base)))
    return ModelSpec(str(base), label="base", load_in_4bit=bool(first and first.config.get("load_in_4bit")))


def training_config(res, stage) -> dict:
    """The Axolotl config of the stage that trained the evaluated model (its chat template is the one to use)."""
    if stage.upstream:
        return res.stage(stage.upstream).config or {}
    return next((s.config for s in res.stages if s.config), {}) or {}


def chat_template(config: dict, tok, source: str | None = None) -> str | None:
    """The chat template training used (None: the tokenizer's own), by `runner.chat_template.stage_template`.

    One that cannot be found or rendered is a TunebookError: evaluating with another template than the one
    trained would score a different model."""
    return stage_template(config, tok, source)[0]


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
    out = {}
    for p in ("transformers", "torch", "peft", "lm_eval", "vllm"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def eval_device() -> str:
    """Where the eval stage runs: "cuda" or "cpu" (recorded with its result)."""
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
    """Each answer's scores (metric -> value in [0, 1], plus `stops`), row by row."""
    out = []
    for r, p in zip(rows, preds):
        try:
            s = mx.score(p["text"], r["reference"], metric_names, r.get("key_fact"), validator)
        except mx.KeyFactTimeout as e:
            raise TunebookError(f"held-out row {r.get('id')!r}: {e}", where="the held-out data (key_fact)",
                                fix="Rewrite that row's key_fact and run the stage again") from None
        s["stops"] = float(p["stopped"])
        out.append(s)
    return out


def open_tasks(res, settings):
    """The lm-eval tasks of eval.forgetting, checked up front (names, datasets), or None."""
    tasks = list(settings["forgetting"].get("tasks") or [])
    if not tasks:
        return None
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
    fg = settings["forgetting"]
    tasks, limit = session.tasks, fg.get("limit")
    t0 = time.time()
    say(f"eval: forgetting check with lm-evaluation-harness on {', '.join(tasks)}"
        + (f" (limit {limit} per task)" if limit else ""))
    task_hash = sha256_json({d.name: sha256_tree(d) for d in session.tmp.iterdir()} | {
        "data": _referenced_data_hash(session.tmp)})
    batch = settings["batch_size"]
    key = sha256_json({"model": model_fingerprint(base.path), **({"4bit": True} if base.load_in_4bit else {}),
                       "tasks": tasks, "limit": limit,
                       "task_files": task_hash, "device": eval_device(), "versions": _versions(), "batch": batch})
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
    files = set()
    for y in tmp.rglob("*.y*ml"):
        for m in re.finditer(r"(/[^\s'\"]+\.(?:jsonl|json|csv|parquet|txt|tsv))", y.read_text()):
            if Path(m.group(1)).is_file():
                files.add(m.group(1))
    return sha256_json({f: sha256_file(f) for f in sorted(files)})


def stage_settings(res) -> dict:
    """eval_settings(res), refused when a forgetting gate has no task to check."""
    settings = eval_settings(res)
    if settings["gates"].get("forgetting") and not settings["forgetting"].get("tasks"):
        raise TunebookError("eval.gates.forgetting is set but eval.forgetting lists no tasks",
                            where=_where(res, "eval", "gates", "forgetting"),
                            fix="Add e.g. `forgetting: {tasks: [general_knowledge], max_drop: {general_knowledge: 5}}`")
    return settings


def eval_rows(res, stage, settings) -> tuple[Path, list[dict]]:
    """held_out_rows(); no rows is an error unless the forgetting check is all the recipe asks for."""
    held_path, rows = held_out_rows(res, stage, settings)
    held_gates = [g for g in settings["gates"] if g != "forgetting"]
    if not rows:
        if held_gates or not settings["forgetting"].get("tasks"):
            raise TunebookError(f"stage '{stage.name}': there are no held-out rows to evaluate on "
                                f"({held_path} is empty)", where=_where(res, "data"),
                                fix="Give data.held_out (a file never trained on) or a held_out_fraction above 0.")
        say("eval: no held-out rows; only the forgetting check runs")
    return held_path, rows


def eval_template(res, stage, base: ModelSpec) -> tuple[str | None, str]:
    """(the chat template training used, None for the tokenizer's own; the template the prompts are rendered
    with)."""
    cfg = training_config(res, stage)

    base_tok = load_tokenizer(base.tokenizer_path())  # shared, unchanged: only its template is read here
    template = chat_template(cfg, base_tok, f"the tokenizer of {base.path}")
    effective_template = template or base_tok.chat_template
    if not effective_template:
        raise TunebookError(f"the tokenizer of {base.path} has no chat template",
                            fix="Set one in the recipe: axolotl: {chat_template: chatml}")
    return template, effective_template


@dataclass
class EvalSetup:
    """What one eval stage evaluates and how, all checked before any model generates."""

    settings: dict                 # eval_settings, with the metrics to score (metrics_for)
    validator: object              # the JSON Schema validator of the json_schema metric, or None
    held_path: Path
    rows: list[dict]
    base: ModelSpec
    tuned: ModelSpec
    template: str | None           # the chat template training used (None: the tokenizer's own)
    effective_template: str        # the one the prompts are rendered with


@dataclass
class Answers:
    """What the models answered: one dict per held-out row (base: None without compare_base), the backend that
    generated the fine-tuned answers, and the forgetting check (None without eval.forgetting)."""

    base: list[dict] | None
    tuned: list[dict]
    backend: str
    forgetting: dict | None


@dataclass
class Scores:
    """Per-row scores and their aggregates (base: None without base answers)."""

    base: list[dict] | None
    tuned: list[dict]
    base_agg: dict | None
    tuned_agg: dict


def prepare_eval(res, stage) -> EvalSetup:
    """Settings, held-out rows, the two models and the chat template of an eval stage; every recipe mistake
    is raised here."""
    settings = stage_settings(res)
    validator = load_schema_validator(res, settings)
    held_path, rows = eval_rows(res, stage, settings)
    tuned = tuned_spec(res, stage)
    base = base_spec(res)
    template, effective_template = eval_template(res, stage, base)
    settings["metrics"] = metrics_for(res, settings, rows)
    return EvalSetup(settings, validator, held_path, rows, base, tuned, template, effective_template)


def base_answers(setup: EvalSetup, backend: str, cache_dir: Path, quiet: bool) -> list[dict] | None:
    """The base model's answers, cached by model, held-out file, settings and software (None without
    compare_base or rows)."""
    settings, rows = setup.settings, setup.rows
    if not (settings["compare_base"] and rows):
        return None
    key = sha256_json({"model": model_fingerprint(setup.base.path),
                       **({"4bit": True} if setup.base.load_in_4bit else {}), "held_out": sha256_file(setup.held_path),
                       "limit": settings.get("limit"), "max_new_tokens": settings["max_new_tokens"],
                       "batch_size": settings["batch_size"], "template": setup.effective_template,
                       "backend": backend, "device": eval_device(), "versions": _versions()})
    cache = cache_dir / "base_predictions.json"
    preds = _cache_get(cache, key)
    if preds is None:
        preds, _ = answers(setup.base, rows, setup.template, settings, quiet)
        _cache_put(cache, key, preds)
    else:
        say("eval: base model's answers from cache (base_predictions.json)")
    return preds


def model_answers(res, setup: EvalSetup, quiet: bool) -> Answers:
    """Base answers (cached), fine-tuned answers and the forgetting check. The lm-eval tasks are checked first:
    unknown tasks and unreachable datasets fail before any generation."""
    cache_dir = res.layout.eval_cache
    backend = backend_name()
    session = open_tasks(res, setup.settings)
    try:
        base_preds = base_answers(setup, backend, cache_dir, quiet)
        tuned_preds, backend = (answers(setup.tuned, setup.rows, setup.template, setup.settings, quiet)
                                if setup.rows else ([], backend))
        forgetting = forgetting_check(session, setup.settings, setup.base, setup.tuned, cache_dir, quiet)
    finally:
        if session is not None:
            session.close()
    return Answers(base_preds, tuned_preds, backend, forgetting)


def score_model(setup: EvalSetup, preds: list[dict]) -> tuple[list[dict], dict]:
    """One model's answers (one {text, stopped} per held-out row) scored with the stage's metrics: (per-row
    scores, their aggregate). The eval stage scores both models with it, `tunebook eval --server` a served one
    (runner.evaluate.served), so served and evaluated scores are the same computation."""
    rows = score_rows(setup.rows, preds, setup.settings["metrics"], setup.validator)
    return rows, mx.aggregate(rows)


def score_answers(setup: EvalSetup, ans: Answers) -> Scores:
    tuned, tuned_agg = score_model(setup, ans.tuned)
    base, base_agg = score_model(setup, ans.base) if ans.base is not None else (None, None)
    return Scores(base, tuned, base_agg, tuned_agg)


def prediction_rows(rows: list[dict], ans: Answers, sc: Scores) -> list[dict]:
    """predictions.jsonl: per held-out row the question, the reference, and both models' answers and scores."""
    out = []
    for i, r in enumerate(rows):
        out.append({
            "id": r["id"], "prompt": next((m["content"] for m in reversed(r["conversation"]) if m["role"] == "user"), ""),
            "reference": r["reference"], "key_fact": r.get("key_fact"),
            "base": ({**ans.base[i], "scores": sc.base[i]} if ans.base is not None else None),
            "tuned": {**ans.tuned[i], "scores": sc.tuned[i]},
        })
    return out


def metrics_record(res, stage, setup: EvalSetup, ans: Answers, sc: Scores, gates: list[dict],
                   seconds: float) -> dict:
    """metrics.json: models, held-out file, settings, aggregates, forgetting and gates."""
    settings, base_agg, tuned_agg = setup.settings, sc.base_agg, sc.tuned_agg
    return {
        "recipe": res.recipe.name, "stage": stage.name,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": {"base": setup.base.describe(), "tuned": setup.tuned.describe()},
        "held_out": {"file": str(setup.held_path.relative_to(res.run_root)), "rows": len(setup.rows),
                     "sha256": sha256_file(setup.held_path)},
        "settings": {"metrics": settings["metrics"], "max_new_tokens": settings["max_new_tokens"],
                     "batch_size": settings["batch_size"], "limit": settings.get("limit"), "decoding": "greedy",
                     "backend": ans.backend, "device": eval_device(),
                     "chat_template": "recipe's (from training config)" if setup.template else "tokenizer's"},
        "base": base_agg, "tuned": tuned_agg,
        "delta": ({k: tuned_agg[k] - base_agg[k] for k in tuned_agg if k in base_agg} if base_agg else None),
        "forgetting": ans.forgetting,
        "gates": gates,
        "passed": not failed_gates(gates),
        "seconds": round(seconds, 1),
    }


def run_eval_stage(res, stage, quiet: bool = False) -> dict:
    """Run one eval stage; returns the metrics dict (also written to <stage dir>/metrics.json). A failed gate
    raises GateFailed once predictions.jsonl and metrics.json are written."""
    t0 = time.time()
    setup = prepare_eval(res, stage)
    stage.run_dir.mkdir(parents=True, exist_ok=True)
    ans = model_answers(res, setup, quiet)
    sc = score_answers(setup, ans)
    gates = check_gates(setup.settings, sc.tuned_agg, ans.forgetting)
    pred_rows = prediction_rows(setup.rows, ans, sc)
    atomic_write_text(stage.paths.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pred_rows))
    result = metrics_record(res, stage, setup, ans, sc, gates, time.time() - t0)
    atomic_write_json(stage.paths.metrics, result)
    print_summary(result)
    track(res, stage, result, pred_rows)
    failed = failed_gates(gates)
    if failed:
        rel = lambda p: os.path.relpath(p, res.recipe.root)
        raise GateFailed(failed, where=rel(stage.paths.metrics), report=rel(res.layout.report))
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
                mlflow.log_artifact(str(StageLayout(stage.run_dir).metrics))
    except ImportError:
        say(f"warning: tracking: {tracking} is set but the {tracking} package is not installed; results are in "
            f"{StageLayout(stage.run_dir).metrics}")
    except Exception as exc:  # a tracker outage must not fail an evaluated run
        say(f"warning: could not log the eval results to {tracking}: {type(exc).__name__}: {exc}")

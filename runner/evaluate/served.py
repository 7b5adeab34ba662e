"""`tunebook eval RECIPE --server URL`: the eval stage's held-out set asked of a served model, to show that what is
served is what was evaluated.

The same rows, conversations, settings and metrics as the eval stage (runner.evaluate.stage.prepare_eval and
score_model), sent as chat completions through the OpenAI client (the server renders them with its chat template:
`tunebook serve` gives vLLM the trained one), greedy (temperature 0) with the stage's max_new_tokens, nothing else
set (the server's own stop tokens end the answers). The results, the eval stage's scores for the same model
(metrics.json) and the difference are written to <stage>/serve-eval.json and printed.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runner.console import say
from runner.errors import TunebookError
from runner.evaluate.stage import prepare_eval, score_model
from runner.fsutil import atomic_write_json
from runner.recipe.shipped import shipped_model
from runner.ship.serve_state import normal_url

API_KEY_ENV = "OPENAI_API_KEY"  # a server started with --api-key wants it; vLLM without one takes any


def _client(url: str, timeout: float):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=os.environ.get(API_KEY_ENV) or "EMPTY", timeout=timeout,
                  max_retries=0)


def _same(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def which_model(res, setup, entry: dict) -> str:
    """'tuned' or 'base': which of the eval stage's models the served one is, by the folder the server loaded it
    from (/v1/models `root`); a TunebookError when it is neither (another recipe's adapter, an older copy)."""
    root = entry.get("root")
    shipped = shipped_model(res, action="evaluate")
    tuned = {setup.tuned.adapter or setup.tuned.path, str(shipped.adapter or ""), str(shipped.merged or "")}
    if any(_same(root, t) for t in tuned):
        return "tuned"
    if entry.get("parent") is None and _same(root, setup.base.path):
        return "base"
    raise TunebookError(f"the server serves {entry.get('id')} from {root}, which is neither {res.recipe.name}'s "
                        f"model ({setup.tuned.describe()}) nor its base ({setup.base.path})",
                        fix=f"Serve the recipe (`tunebook serve {res.recipe.name}`), or name the model that is "
                            "it with --model.")


def ask(client, model: str, conversation: list[dict], max_new_tokens: int) -> dict:
    """One greedy chat completion: {text, stopped (ended at the end of turn, not at max_new_tokens), tokens}."""
    r = client.chat.completions.create(model=model, messages=conversation, temperature=0,
                                       max_tokens=max_new_tokens)
    choice = r.choices[0]
    return {"text": (choice.message.content or "").strip(), "stopped": choice.finish_reason == "stop",
            "tokens": r.usage.completion_tokens if r.usage else None, "finish_reason": choice.finish_reason}


def _eval_stage_results(stage, who: str) -> tuple[dict | None, dict]:
    """The eval stage's aggregates for that model (None when it has not run) and its answers by row id."""
    try:
        metrics = json.loads(stage.paths.metrics.read_text())
    except (OSError, ValueError):
        return None, {}
    answers = {}
    try:
        for line in stage.paths.predictions.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                answers[row["id"]] = (row.get(who) or {}).get("text")
    except (OSError, ValueError, KeyError):
        pass
    return metrics.get(who), answers


def eval_served(res, stage, url: str, model: str | None = None, timeout: float = 600.0) -> dict:
    """Answer the stage's held-out set with the served `model` (default: the recipe's adapter, served under the
    recipe's name), score it, compare it with the eval stage; returns what <stage>/serve-eval.json holds."""
    from openai import APIConnectionError, APIError

    url = normal_url(url)
    setup = prepare_eval(res, stage)
    settings, rows = setup.settings, setup.rows
    if not rows:
        raise TunebookError(f"stage '{stage.name}' has no held-out rows to ask the server")
    model = model or res.recipe.name
    client = _client(url, timeout)
    try:
        listed = {m.id: m.to_dict() for m in client.models.list().data}
    except APIConnectionError:
        raise TunebookError(f"cannot reach a server at {url}", fix="Start one (`tunebook serve RECIPE`) and pass "
                                                                     "its URL (it prints it).", exit_code=1) from None
    except APIError as exc:
        raise TunebookError(f"the server at {url} did not list its models: {exc}", exit_code=1) from None
    if model not in listed:
        raise TunebookError(f"the server at {url} does not serve {model} (it serves {', '.join(listed)})",
                            fix=f"Load it (`tunebook serve --add {res.recipe.name}`) or name one with --model.")
    who = which_model(res, setup, listed[model])
    say(f"eval: asking {model} at {url} the {len(rows)} held-out prompts of {res.recipe.name} "
        f"(greedy, at most {settings['max_new_tokens']} new tokens)")
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(settings["batch_size"], len(rows)))) as pool:
            preds = list(pool.map(lambda r: ask(client, model, r["conversation"], settings["max_new_tokens"]), rows))
    except APIError as exc:
        raise TunebookError(f"the server at {url} failed to answer: {exc}", exit_code=1) from None
    per_row, served = score_model(setup, preds)
    stage_agg, stage_answers = _eval_stage_results(stage, who)
    same = sum(1 for r, p in zip(rows, preds) if stage_answers.get(r["id"]) == p["text"])
    result = {
        "recipe": res.recipe.name, "stage": stage.name, "server": url, "model": model,
        "compared_with": f"eval stage, {who} model",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "held_out": {"file": str(setup.held_path.relative_to(res.run_root)), "rows": len(rows)},
        "settings": {"metrics": settings["metrics"], "max_new_tokens": settings["max_new_tokens"],
                     "decoding": "greedy", "client": "openai chat.completions"},
        "served": served, "eval_stage": stage_agg,
        "difference": ({k: v - stage_agg[k] for k, v in served.items() if k in stage_agg} if stage_agg else None),
        "same_answers": same if stage_answers else None,
        "answers": [{"id": r["id"], **p, "scores": s, "eval_stage_text": stage_answers.get(r["id"])}
                    for r, p, s in zip(rows, preds, per_row)],
    }
    atomic_write_json(stage.paths.serve_eval, result)
    return result


def print_comparison(res, result: dict, path: Path) -> None:
    """The served scores beside the eval stage's, one metric a line."""
    stage_agg = result["eval_stage"] or {}
    print(f"{result['model']} at {result['server']}: {result['held_out']['rows']} held-out rows of "
          f"{result['recipe']}, greedy; {result['compared_with']}")
    print(f"  {'metric':<12} {'eval stage':>10} {'served':>8} {'difference':>11}")
    for k, v in result["served"].items():
        b = stage_agg.get(k)
        print(f"  {k:<12} {'–' if b is None else f'{b:.3f}':>10} {v:8.3f} {'' if b is None else f'{v - b:+.3f}':>11}")
    if result["same_answers"] is not None:
        print(f"  answers identical to the eval stage's: {result['same_answers']}/{result['held_out']['rows']}")
    else:
        print(f"  the eval stage has not run: nothing to compare (`tunebook eval {result['recipe']}`)")
    print(f"results at {os.path.relpath(path, res.recipe.root)}")

"""Catastrophic-forgetting check with EleutherAI's lm-evaluation-harness: score the base and the fine-tuned model
on the same benchmark tasks with the same settings and compare.

Tasks are lm-eval task names (mmlu, gsm8k, ...; these need their hub datasets, which are not fetched offline) or
local tasks: lm-eval task YAMLs in the project's recipes/tasks/ (and tunebook's own, e.g. general_knowledge over
recipes/data/general-knowledge/mc.jsonl). Scores are in points (0-100) so that max_drop reads "2 points of MMLU".
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from runner.console import say
from runner.errors import TunebookError
from runner.evaluate.generate import ModelSpec, load_model, set_threads
from runner.hardware import detect as detect_hardware
from runner.recipe.load import PACKAGE_ROOT
from runner.tokenizer import load_tokenizer as load_shared_tokenizer

PREFERRED_METRICS = ("acc,none", "exact_match,strict-match", "exact_match,flexible-extract", "exact_match,none",
                     "acc_norm,none", "f1,none", "mcc,none")
OFFLINE_HINTS = ("offline", "couldn't reach", "could not reach", "connection", "doesn't exist on the hub",
                 "not found on the hub", "cannot find the requested files", "localentrynotfound",
                 "datasetnotfound", "unable to find", "no such file", "max retries", "name resolution")


class _FunctionTag(str):
    """A `!function module.name` value of an lm-eval task YAML, kept as written."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: _FunctionTag(loader.construct_scalar(node)))
_Dumper.add_representer(_FunctionTag, lambda dumper, data: dumper.represent_scalar("!function", str(data)))


def task_dirs(root: Path) -> list[Path]:
    """Folders of local lm-eval task YAMLs: the project's recipes/tasks, then tunebook's own."""
    out = []
    for d in (Path(root) / "recipes" / "tasks", PACKAGE_ROOT / "recipes" / "tasks"):
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def _absolute(value, bases: list[Path]):
    """A relative data path made absolute against the first base where it exists."""
    if isinstance(value, list):
        return [_absolute(v, bases) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, bases) for k, v in value.items()}
    if not isinstance(value, str) or "://" in value or Path(value).is_absolute():
        return value
    for b in bases:
        if (b / value).exists():
            return str((b / value).resolve())
    return value


def materialise_tasks(root: Path, dest: Path) -> list[Path]:
    """Copy the local task folders into `dest`, rewriting relative data paths in every YAML to absolute ones.

    lm-eval hands `data_files` to `datasets`, which resolves them against the current directory; this makes a
    recipe's tasks work from any working directory."""
    out = []
    for i, src in enumerate(task_dirs(root)):
        tgt = dest / f"tasks{i}"
        shutil.copytree(src, tgt, ignore=shutil.ignore_patterns("__pycache__"))
        for y in list(tgt.rglob("*.yaml")) + list(tgt.rglob("*.yml")):
            orig_dir = src / y.parent.relative_to(tgt)
            bases = [Path(root), orig_dir, PACKAGE_ROOT]
            try:
                doc = yaml.load(y.read_text(), Loader=_Loader)
            except yaml.YAMLError:
                continue  # lm-eval will report it
            if not isinstance(doc, dict):
                continue
            changed = False
            kw = doc.get("dataset_kwargs")
            if isinstance(kw, dict):
                for key in ("data_files", "data_dir"):
                    if key in kw:
                        new = _absolute(kw[key], bases)
                        changed |= new != kw[key]
                        kw[key] = new
            dp = doc.get("dataset_path")
            if isinstance(dp, str) and (dp.startswith(".") or "/" in dp):
                new = _absolute(dp, bases)
                if new != dp and Path(new).exists():
                    doc["dataset_path"], changed = new, True
            if changed:
                y.write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True))
        out.append(tgt)
    return out


def local_task_names(root: Path) -> list[str]:
    names = []
    for d in task_dirs(root):
        for y in sorted(d.rglob("*.yaml")):
            try:
                doc = yaml.load(y.read_text(), Loader=_Loader)
            except yaml.YAMLError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("task"), str):
                names.append(doc["task"])
    return names


def pick_metric(result: dict) -> tuple[str, float] | None:
    """(metric name, value) of a task's headline metric in lm-eval's results."""
    for key in PREFERRED_METRICS:
        if isinstance(result.get(key), (int, float)):
            return key.split(",")[0] + ("" if key.endswith(",none") else f" ({key.split(',')[1]})"), result[key]
    for key, v in result.items():
        if isinstance(v, (int, float)) and "stderr" not in key and key not in ("alias", "samples"):
            return key.replace(",none", ""), v
    return None


def _quiet_lm_eval():
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def task_error(task: str, exc: Exception, root: Path) -> TunebookError:
    """A readable error for a task lm-eval could not run; a hub dataset that can't be fetched says so."""
    msg = f"{type(exc).__name__}: {exc}"
    if task not in local_task_names(root) and (
            os.environ.get("HF_HUB_OFFLINE") == "1" or any(h in msg.lower() for h in OFFLINE_HINTS)):
        return TunebookError(
            f"eval.forgetting: the dataset of lm-eval task '{task}' isn't available offline "
            f"({msg.splitlines()[0][:200]})",
            fix="Hub datasets can't be fetched here. Use a local task instead: an lm-eval task YAML in "
                "recipes/tasks/ over a local file, e.g. `forgetting: {tasks: [general_knowledge]}` "
                "(recipes/tasks/general_knowledge.yaml), or run where the hub is reachable.",
            exit_code=1)
    return TunebookError(f"eval.forgetting: lm-eval failed on task '{task}': {msg[:500]}", exit_code=1)


class TaskSession:
    """Local tasks materialised into a temp folder and an lm-eval TaskManager over them (built once)."""

    def __init__(self, root: Path, tasks: list[str]):
        self.root, self.tasks = Path(root), list(tasks)
        self.tmp = Path(tempfile.mkdtemp(prefix="tunebook-tasks-"))
        try:
            self._index(tasks)
        except BaseException:
            self.close()  # an unknown task (or Ctrl-C while indexing) leaves no temp folder behind
            raise

    def _index(self, tasks: list[str]) -> None:
        from lm_eval.tasks import TaskManager

        include = [str(p) for p in materialise_tasks(self.root, self.tmp)]
        local = set(local_task_names(self.root))
        # Indexing lm-eval's ~200 built-in task folders takes seconds: only do it for non-local tasks.
        self.tm = TaskManager(include_path=include or None, include_defaults=not set(tasks) <= local,
                              verbosity="ERROR")
        known = set(self.tm.all_tasks)
        for t in tasks:
            if t not in known:
                import difflib

                close = difflib.get_close_matches(t, sorted(known), n=3, cutoff=0.6)
                raise TunebookError(
                    f"eval.forgetting: unknown lm-eval task '{t}'"
                    + (f" (did you mean {', '.join(close)})" if close else ""),
                    fix=f"Use an lm-eval task name (e.g. mmlu, gsm8k, arc_easy) or a local task from recipes/tasks/"
                        f" ({', '.join(sorted(local)) or 'none'}).")

    def check_datasets(self) -> None:
        """Build every task once (that loads its dataset) so a dataset that can't be had offline fails the
        stage before any model is loaded."""
        from lm_eval.tasks import get_task_dict

        _quiet_lm_eval()
        for task in self.tasks:
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    get_task_dict([task], self.tm)
            except Exception as exc:
                raise task_error(task, exc, self.root) from None

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_tasks(rec) -> None:
    """Refuse an eval.forgetting task lm-eval doesn't know, at its line, before any stage trains (the eval stage
    would only find out after training); `tunebook validate` calls it. Naming a hub task costs lm-eval's task
    index, a few seconds. Without lm-eval (tunebook without its training extras: the light image) the machine
    that evaluates checks them."""
    fg = (rec.data.get("eval") or {}).get("forgetting") or {}
    tasks = fg.get("tasks") or []
    if not tasks or not any(s.kind == "eval" for s in rec.stages):
        return
    if importlib.util.find_spec("lm_eval") is None:
        return
    try:
        TaskSession(rec.root, tasks).close()
    except TunebookError as exc:
        i = next((i for i, t in enumerate(tasks) if f"'{t}'" in exc.what), 0)
        raise TunebookError(exc.what, where=rec.where("eval", "forgetting", "tasks", i), fix=exc.fix) from None


def _device_dtype():
    import torch

    if torch.cuda.is_available():  # bf16 from compute capability 8.0 (runner.hardware), not emulated bf16
        return "cuda", ("bfloat16" if detect_hardware().bf16 else "float16")
    return "cpu", "float32"


def evaluate_model(spec: ModelSpec, session: TaskSession, limit: int | float | None = None, batch_size: int = 8,
                   quiet: bool = False) -> dict[str, dict]:
    """{task: {"metric", "score" (points 0-100 for rates), "raw", "samples"}} for one model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    set_threads()
    device, dtype = _device_dtype()
    sink = io.StringIO()
    redirect = contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext()
    with redirect:
        if spec.load_in_4bit and device == "cuda":
            # lm-eval cannot quantize on load; it takes a loaded model: the same 4-bit one the answers used
            model, _ = load_model(spec)
            lm = HFLM(pretrained=model, tokenizer=load_shared_tokenizer(spec.tokenizer_path(), private=True),
                      batch_size=batch_size)
        else:
            lm = HFLM(pretrained=spec.path, peft=spec.adapter, tokenizer=spec.tokenizer_path(), device=device,
                      dtype=dtype, batch_size=batch_size)
    out = {}
    try:
        for task in session.tasks:
            if not quiet:
                say(f"  {spec.label}: lm-eval task {task}" + (f" (limit {limit})" if limit else ""))
            try:
                with redirect:
                    res = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=session.tm,
                                                  log_samples=False, bootstrap_iters=0, verbosity="ERROR",
                                                  random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                                                  fewshot_random_seed=1234)
            except TunebookError:
                raise
            except Exception as exc:  # lm-eval and datasets raise many types; name the task and the cause
                raise task_error(task, exc, session.root) from None
            if res is None:
                continue
            block = (res.get("groups") or {}).get(task) or res["results"].get(task) or {}
            picked = pick_metric(block)
            if picked is None:
                raise TunebookError(f"eval.forgetting: lm-eval task '{task}' reported no score", exit_code=1)
            name, value = picked
            samples = (res.get("n-samples") or {}).get(task, {}).get("effective")
            out[task] = {"metric": name, "raw": value,
                         "score": round(value * 100, 4) if 0 <= value <= 1 else value, "samples": samples}
    finally:
        del lm
        import gc

        gc.collect()
    return out


def compare(base: dict, tuned: dict, max_drop: dict | None) -> dict[str, dict]:
    """Per task: base and tuned score, drop in points, allowed drop and whether it is within it."""
    out = {}
    for task, t in tuned.items():
        b = base.get(task)
        row = {"metric": t["metric"], "tuned": t["score"], "base": b["score"] if b else None,
               "samples": t.get("samples")}
        if b is not None:
            row["drop"] = round(b["score"] - t["score"], 4)
        allowed = (max_drop or {}).get(task)
        row["max_drop"] = allowed
        row["ok"] = None if allowed is None or b is None else row["drop"] <= allowed + 1e-9
        out[task] = row
    return out


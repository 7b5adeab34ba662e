"""runs/<recipe>/report.md and runs/<recipe>/plots/*.png, built from what the run actually logged: each training
stage's Trainer log (train.log / trainer_state.json, via runner.train.trainlog) and each eval stage's metrics.json and
predictions.jsonl. The pipeline writes it after an eval stage (the stages never call it); `tunebook report <recipe>`
(make report) regenerates it without running anything."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from runner.evaluate import metrics as mx
from runner.evaluate.gates import describe_gate, failed_gates
from runner.fsutil import atomic_dir, atomic_write_text
from runner.layout import RunLayout
from runner.recipe.load import TRAIN_KINDS
from runner.recipe.shipped import training_stages
from runner.train import trainlog

# "train": a training stage found in a run folder without a manifest, whose kind is not known (discover_stages).
DISCOVERED_TRAINING = "train"
TRAINING_KINDS = (*TRAIN_KINDS, DISCOVERED_TRAINING)
TOP_CHANGED = 10


# ---------------------------------------------------------------------------------------------- discovery


def discover_stages(run_root: Path) -> list[tuple[str, str]]:
    """(name, kind) of the stages of a run folder: from manifest.json, else from the folders' contents."""
    layout = RunLayout(Path(run_root))
    man = layout.manifest
    if man.is_file():
        try:
            stages = json.loads(man.read_text()).get("stages") or {}
            if stages:
                return [(n, e.get("kind", DISCOVERED_TRAINING)) for n, e in stages.items()]
        except ValueError:
            pass
    out = []
    for d in sorted(p for p in layout.root.iterdir() if p.is_dir()):
        sl = layout.stage(d.name)
        if sl.metrics.is_file() and sl.predictions.is_file():
            out.append((d.name, "eval"))
        elif sl.log.is_file() or sl.output.is_dir():
            out.append((d.name, DISCOVERED_TRAINING))
    return out


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


# ---------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _x(entries: list[dict]) -> tuple[list[float], str]:
    if entries and all(isinstance(e.get("step"), (int, float)) for e in entries):
        return [float(e["step"]) for e in entries], "step"
    if entries and all(isinstance(e.get("epoch"), (int, float)) for e in entries):
        return [float(e["epoch"]) for e in entries], "epoch"
    return [float(i + 1) for i in range(len(entries))], "logged step"


def plot_loss(hist: list[dict], stage: str, kind: str, path: Path) -> bool:
    train = [h for h in hist if isinstance(h.get("loss"), float)]
    evals = [h for h in hist if isinstance(h.get("eval_loss"), float)]
    if not train and not evals:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    xlabel = "step"
    if train:
        xs, xlabel = _x(train)
        ax.plot(xs, [h["loss"] for h in train], marker="o" if len(train) < 30 else None, ms=3, label="train loss")
    if evals:
        xs, xl = _x(evals)
        if not train or xl == xlabel:
            ax.plot(xs, [h["eval_loss"] for h in evals], marker="s", ms=5, label="eval loss")
            xlabel = xl
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(f"{stage}: loss" if stage == kind else f"{stage} ({kind}): loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_margins(hist: list[dict], stage: str, path: Path) -> bool:
    rows = [h for h in hist if isinstance(h.get("rewards/margins"), float)]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    xs, xlabel = _x(rows)
    ax.plot(xs, [h["rewards/margins"] for h in rows], marker="o" if len(rows) < 30 else None, ms=3,
            color="tab:green", label="reward margin (chosen - rejected)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward margin")
    acc = [h for h in rows if isinstance(h.get("rewards/accuracies"), float)]
    if acc:
        ax2 = ax.twinx()
        ax2.plot(_x(acc)[0], [h["rewards/accuracies"] for h in acc], ls="--", color="tab:purple",
                 label="reward accuracy")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("reward accuracy")
        ax2.legend(loc="lower right")
    ax.set_title(f"{stage}: preference reward margin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def plot_before_after(m: dict, path: Path) -> bool:
    tuned = m.get("tuned") or {}
    base = m.get("base") or {}
    ftasks = ((m.get("forgetting") or {}).get("tasks")) or {}
    panels = (["held_out"] if tuned else []) + (["forgetting"] if ftasks else [])
    if not panels:
        return False
    plt = _plt()
    ratios = [max(2, len(tuned)) if p == "held_out" else max(1, len(ftasks)) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 + 4 * len(panels), 4), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    w = 0.38
    for ax, panel in zip(axes[0], panels):
        if panel == "held_out":
            names = list(tuned)
            xs = range(len(names))
            if base:
                b = ax.bar([x - w / 2 for x in xs], [base.get(n, 0) for n in names], w, label="base", color="tab:grey")
                ax.bar_label(b, fmt="%.2f", fontsize=7)
            t = ax.bar([x + (w / 2 if base else 0) for x in xs], [tuned[n] for n in names], w, label="fine-tuned",
                       color="tab:blue")
            ax.bar_label(t, fmt="%.2f", fontsize=7)
            ax.set_xticks(list(xs), names, rotation=20)
            ax.set_ylim(0, 1.12)
            ax.set_title(f"held-out ({m.get('held_out', {}).get('rows', '?')} rows)")
        else:
            names = list(ftasks)
            xs = range(len(names))
            b = ax.bar([x - w / 2 for x in xs], [ftasks[n]["base"] or 0 for n in names], w, label="base",
                       color="tab:grey")
            t = ax.bar([x + w / 2 for x in xs], [ftasks[n]["tuned"] for n in names], w, label="fine-tuned",
                       color="tab:orange")
            ax.bar_label(b, fmt="%.1f", fontsize=7)
            ax.bar_label(t, fmt="%.1f", fontsize=7)
            ax.set_xticks(list(xs), [f"{n}\n(max drop {ftasks[n]['max_drop']:g})"
                                     if ftasks[n].get("max_drop") is not None else n for n in names], fontsize=8)
            ax.set_ylim(0, 110)
            ax.set_ylabel("points")
            ax.set_title("forgetting (lm-eval)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{m.get('recipe', '')}: before / after fine-tuning")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- markdown


def _cell(text, limit: int = 160) -> str:
    s = "" if text is None else str(text)
    s = " ".join(s.split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|").replace("<", "&lt;")


def _f(v, fmt=".3f") -> str:
    return "–" if v is None else format(v, fmt)


def biggest_changes(preds: list[dict], n: int = TOP_CHANGED) -> list[tuple[float, dict]]:
    """The rows whose score moved most between base and fine-tuned (ties: the answer text changed most)."""
    ranked = []
    for p in preds:
        if not p.get("base"):
            continue
        bs, ts = p["base"].get("scores", {}), p["tuned"].get("scores", {})
        keys = [k for k in ts if k in bs and k != "stops"]
        delta = sum(ts[k] - bs[k] for k in keys) / len(keys) if keys else 0.0
        text_change = 1 - mx.rouge_l(p["base"].get("text", ""), p["tuned"].get("text", ""))
        ranked.append((abs(delta), text_change, delta, p))
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(d, p) for _, _, d, p in ranked[:n]]


def _training_section(name, kind, hist, plots: dict) -> list[str]:
    s = trainlog.summary(hist)
    lines = [f"### {name} ({kind})", ""]
    if not hist:
        return lines + ["No logged training steps found (train.log / trainer_state.json).", ""]
    rows = [("logged steps", s.get("logged_steps")), ("first train loss", _f(s.get("train_loss_first"))),
            ("last train loss", _f(s.get("train_loss_last"))), ("lowest train loss", _f(s.get("train_loss_min")))]
    if "eval_loss_best" in s:
        rows.append(("best eval loss", _f(s["eval_loss_best"])))
    for _, metric, label in trainlog.PREFERENCE_METRICS:
        if f"{metric}_last" in s:
            rows.append((f"{label}, first → last", f"{s[f'{metric}_first']:.3f} → {s[f'{metric}_last']:.3f}"))
    if "train_runtime_s" in s:
        rows.append(("runtime", f"{float(s['train_runtime_s']):.0f} s"))
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]
    for key in ("loss", "margins"):
        if key in plots:
            lines += [f"![{name} {key}](plots/{plots[key]})", ""]
    return lines


def _gates_table(gates: list[dict]) -> list[str]:
    if not gates:
        return []
    lines = ["### Gates", "", "| gate | value | required | result |", "|---|---:|---:|---|"]
    for g in gates:
        if g.get("kind") == "forgetting":
            val, req = f"drop {g['value']:.1f}", f"drop ≤ {g['threshold']:g}"
        else:
            val, req = _f(g.get("value")), f"≥ {g['threshold']:g}"
        lines.append(f"| {g['gate']} | {val} | {req} | {'pass' if g['passed'] else '**FAIL**'} |")
    return lines + [""]


def _merge_eval_section(name: str, m: dict) -> list[str]:
    """A merge recipe's eval (runner.evaluate.sources): per source, its own score, the merged model's, the drop."""
    st = m.get("settings", {})
    how = f"t = {m['t']:g}" if m.get("t") is not None else "weights and densities per source below"
    lines = [f"## Evaluation: {name} (mergekit {m['method']} of {', '.join(m['sources'])})", "",
             f"Merged model `{m['model']}` ({m['method']}, {how}; base `{m['base_model']}`), scored on each source "
             "recipe's held-out set with that source's own eval settings and trained chat template. "
             f"Decoding: {st.get('decoding', 'greedy')}, backend {st.get('backend')} on {st.get('device')}. "
             "Drop = the source's own score − the merged model's (positive: the merge lost some of it).", "",
             "| source | weight | density | held-out rows | metric | source alone | merged | drop |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for src, e in m["sources"].items():
        own, drop = e.get("source") or {}, e.get("drop") or {}
        for k, v in e["merged"].items():
            lines.append(f"| {src} | {_f(e.get('weight'), 'g')} | {_f(e.get('density'), 'g')} | "
                         f"{e['held_out']['rows']} | {k} | {_f(own.get(k))} | {_f(v)} | {_f(drop.get(k), '+.3f')} |")
    lines.append("")
    missing = [f"{src}: {e['source_missing']}" for src, e in m["sources"].items() if e.get("source_missing")]
    if missing:
        lines += ["No source score to compare with for " + "; ".join(missing) + ".", ""]
    return lines + _gates_table(m.get("gates") or [])


def _eval_section(name: str, m: dict, preds: list[dict], plot: str | None) -> list[str]:
    st = m.get("settings", {})
    lines = [f"## Evaluation: {name}", "",
             f"Held-out set: {m['held_out']['rows']} rows (`{m['held_out']['file']}`), never trained on. "
             f"Decoding: {st.get('decoding', 'greedy')}, max {st.get('max_new_tokens')} new tokens, "
             f"{st.get('chat_template', '')} chat template, backend {st.get('backend')} on {st.get('device')}.",
             f"Base model: `{m['models']['base']}`; fine-tuned: `{m['models']['tuned']}`.", ""]
    base, tuned = m.get("base") or {}, m.get("tuned") or {}
    if tuned:
        lines += ["| metric | base | fine-tuned | change |", "|---|---:|---:|---:|"]
        for k, v in tuned.items():
            b = base.get(k)
            lines.append(f"| {k} | {_f(b)} | {_f(v)} | {'–' if b is None else f'{v - b:+.3f}'} |")
        lines.append("")
    else:
        lines += ["No held-out rows were evaluated.", ""]
    ft = (m.get("forgetting") or {}).get("tasks") or {}
    if ft:
        lim = m["forgetting"].get("limit")
        lines += ["### Forgetting (lm-evaluation-harness, same settings for both models)", "",
                  (f"Scored on the first {lim} examples of each task. " if lim else "")
                  + "Scores in points (0-100); drop = base − fine-tuned.", "",
                  "| task | metric | base | fine-tuned | drop | allowed drop | within limit |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for t, r in ft.items():
            ok = "–" if r.get("ok") is None else ("yes" if r["ok"] else "**no**")
            lines.append(f"| {t} | {r['metric']} | {_f(r.get('base'), '.1f')} | {_f(r.get('tuned'), '.1f')} | "
                         f"{_f(r.get('drop'), '+.1f')} | {_f(r.get('max_drop'), 'g')} | {ok} |")
        lines.append("")
    if plot:
        lines += [f"![before/after](plots/{plot})", ""]
    lines += _gates_table(m.get("gates") or [])
    changed = biggest_changes(preds)
    if changed:
        lines += [f"### The {len(changed)} held-out examples where the fine-tuned model changed most", "",
                  "Score change = mean change over the text metrics for that row.", "",
                  "| # | id | question | reference | base answer | fine-tuned answer | score change |",
                  "|---:|---|---|---|---|---|---:|"]
        for i, (d, p) in enumerate(changed, 1):
            lines.append(f"| {i} | {_cell(p.get('id'), 40)} | {_cell(p.get('prompt'))} | {_cell(p.get('reference'))} | "
                         f"{_cell(p['base'].get('text'))} | {_cell(p['tuned'].get('text'))} | {d:+.2f} |")
        lines.append("")
    elif preds:
        lines += ["(No base-model answers: eval.compare_base is false, so there is no before/after per example.)", ""]
    return lines


def write_report(run_root: Path, recipe_name: str | None = None, stages: list[tuple[str, str]] | None = None,
                 info: dict | None = None) -> Path:
    """Write <run_root>/report.md and <run_root>/plots/*.png; return the report's path."""
    run_root = Path(run_root)
    layout = RunLayout(run_root)
    recipe_name = recipe_name or run_root.name
    stages = stages if stages is not None else discover_stages(run_root)
    md = [f"# Fine-tuning report: {recipe_name}", "",
          f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from `runs/{recipe_name}/` "
          "(the training logs and eval results of the last run). Regenerate: `make report RECIPE="
          f"{recipe_name}`.", ""]
    for k, v in (info or {}).items():
        md.append(f"- {k}: {v}")
    if info:
        md.append("")
    verdict, train_md, eval_md = [], [], []
    with atomic_dir(layout.plots) as plots_dir:
        for name, kind in stages:
            sl = layout.stage(name)
            if kind in TRAINING_KINDS:
                hist = trainlog.history(sl.dir)
                made = {}
                if plot_loss(hist, name, kind, plots_dir / f"loss_{name}.png"):
                    made["loss"] = f"loss_{name}.png"
                if plot_margins(hist, name, plots_dir / f"reward_margin_{name}.png"):
                    made["margins"] = f"reward_margin_{name}.png"
                train_md += _training_section(name, kind, hist, made)
            elif kind == "eval":
                mfile = sl.metrics
                if not mfile.is_file():
                    eval_md += [f"## Evaluation: {name}", "", "Not run yet.", ""]
                    continue
                m = json.loads(mfile.read_text())
                if m.get("kind") == "merge":
                    eval_md += _merge_eval_section(name, m)
                else:
                    preds = _read_jsonl(sl.predictions)
                    plot = f"before_after_{name}.png"
                    if not plot_before_after(m, plots_dir / plot):
                        plot = None
                    eval_md += _eval_section(name, m, preds, plot)
                failed = failed_gates(m.get("gates"))
                if not m.get("gates"):
                    verdict.append(f"- {name}: no gates set (eval.gates); results below.")
                elif failed:
                    verdict.append(f"- {name}: **FAILED** — " + "; ".join(describe_gate(g) for g in failed)
                                   + ". The pipeline stopped before the stages after it.")
                else:
                    verdict.append(f"- {name}: **passed** all {len(m['gates'])} gates.")
    if verdict:
        md += ["## Verdict", ""] + verdict + [""]
    if train_md:
        md += ["## Training", ""] + train_md
    md += eval_md
    path = layout.report
    atomic_write_text(path, "\n".join(md).rstrip() + "\n")
    return path


def report_for(res) -> Path:
    """The report of a resolved recipe's run folder."""
    rec = res.recipe
    first = next(iter(training_stages(res)), None)
    info = {"recipe file": f"`{os.path.relpath(rec.path, rec.root)}`"}
    if first:
        info["base model"] = f"`{first.config.get('base_model')}`"
    if res.merge is not None:
        info["base model"] = f"`{res.merge.base_model}`"
        info["merges"] = ", ".join(f"`{s.name}`" for s in res.merge.sources) + f" with mergekit {res.merge.method}"
    info["stages"] = ", ".join(f"{s.name} ({s.kind})" for s in res.stages)
    return write_report(res.run_root, rec.name, [(s.name, s.kind) for s in res.stages], info)

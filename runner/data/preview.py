"""Template preview: training examples exactly as the model is trained on them.

Rows come from the prepared train file and go through Axolotl's own prompt strategy for the resolved stage
config (the tokenizer Axolotl loads, the chat template it picks, its masking rules), so what is shown is what
is trained: trained tokens (label != -100) are bold green, masked tokens dim, special tokens literal.

Also warns when the end-of-turn token is masked out of every example (the model never learns to stop) or
missing, and when the stage's chat template differs from the tokenizer's own.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from runner import preference
from runner.chat_template import (default_system_prompt, end_of_turn_token, stage_template,
                                  template_without_default_system)
from runner.data.prepare import prepare
from runner.errors import TunebookError
from runner.recipe.load import PREFERENCE_KINDS, TRAIN_KINDS, looks_like_path
from runner.tokenizer import load_tokenizer

IGNORE = -100


@dataclass
class Example:
    """One tokenized training example."""

    where: str
    input_ids: list[int]
    labels: list[int]
    tokens: list[str]
    special: list[bool]
    eot_positions: list[int] = field(default_factory=list)
    rejected_ids: list[int] | None = None

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def eot_trained(self) -> bool:
        return any(self.labels[p] != IGNORE for p in self.eot_positions)



@dataclass
class Preview:
    stage: str
    kind: str
    tokenizer: str
    eot: str | None
    eot_id: int | None
    eos: str | None
    sequence_len: int
    examples: list[Example]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokenizer_obj: object = None


# --------------------------------------------------------------------------------------------- analysis


def analyse(examples: list[Example], eot: str | None, eot_id: int | None) -> list[str]:
    """Warnings about the end-of-turn token across examples (pure: no model needed)."""
    if not examples:
        return ["no examples to preview: the prepared train file is empty"]
    if eot is None or eot_id is None:
        return ["the chat template's end-of-turn token could not be found: check that the template closes "
                "assistant turns with a special token, or the model will not learn where answers end"]
    present = [e for e in examples if e.eot_positions]
    if not present:
        return [f"the end-of-turn token {eot} is missing from every previewed example: the model never sees "
                "where an answer ends and will not learn to stop"]
    if not any(e.eot_trained for e in present):
        return [f"the end-of-turn token {eot} is masked (label -100) in every previewed example: the model never "
                "learns to stop and answers run on while the loss looks healthy. Train on it: keep "
                "`train_on_eos: turn` for the dataset and `eot_tokens: [" + eot + "]` (tunebook sets both unless "
                "the recipe's `axolotl:` block overrides them)"]
    masked = [e.where for e in present if not e.eot_trained]
    if masked:
        return [f"the end-of-turn token {eot} is masked in {len(masked)} of {len(examples)} examples "
                f"(first: {masked[0]})"]
    return []


def template_note(stage_tpl: str | None, tokenizer_template: str | None, stripped: str | None,
                  default_system: str | None, origin: str = "chat_template_jinja") -> str | None:
    """Informational warning when the stage trains with another chat template than the tokenizer's own."""
    if not stage_tpl or not tokenizer_template or stage_tpl == tokenizer_template:
        return None
    if stripped is not None and stage_tpl == stripped:
        return ("the stage's chat template differs from the tokenizer's own on purpose: tunebook removed the "
                f"default system prompt the template injects (\"{(default_system or '')[:70]}\") so it is not "
                "trained into every example; set `system_prompt:` in the recipe to choose one. Informational")
    return (f"the stage's chat template ({origin}) differs from the tokenizer's own: the model is "
            "trained in a format its tokenizer does not produce by default; make sure inference uses the same "
            "template (the merged model is saved with it)")


# --------------------------------------------------------------------------------------------- axolotl


@contextlib.contextmanager
def _quiet():
    """Axolotl and its imports log a lot at INFO; keep the preview readable."""
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    levels = {}
    for name in ("axolotl", "transformers", "torchao", "bitsandbytes", "datasets", "root", ""):
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        # Native code and loggers bound to the real stderr at import time write to the file descriptors.
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


def _stage(res, name: str | None):
    trainable = [s for s in res.stages if s.config and s.kind in TRAIN_KINDS]
    if name:
        st = next((s for s in res.stages if s.name == name), None)
        if st is None or st not in trainable:
            raise TunebookError(f"recipe {res.recipe.name} has no training stage '{name}'",
                                fix=f"Training stages: {', '.join(s.name for s in trainable) or '(none)'}.")
        return st
    if not trainable:
        raise TunebookError(f"recipe {res.recipe.name} has no training stage to preview")
    return next((s for s in trainable if s.kind == "sft"), trainable[0])


def _local_base(res, cfg: dict) -> tuple[dict, str | None]:
    """The stage config with a base model that is on disk (an upstream stage's output may not exist yet)."""
    base = str(cfg.get("base_model"))
    if Path(base).is_dir():
        return cfg, None
    rb = res.recipe.data["base_model"]
    rb = str(res.recipe.resolve_path(rb)) if looks_like_path(rb) else rb
    cfg = {**cfg, "base_model": rb}
    cfg.pop("lora_model_dir", None)
    return cfg, f"{base} does not exist yet: previewing with the tokenizer of {rb} (the same tokenizer)"


def axolotl_setup(cfg: dict):
    """(normalised Axolotl cfg, tokenizer) exactly as `axolotl train` builds them."""
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.dict import DictDefault

    c = validate_config(DictDefault(copy.deepcopy(cfg)))
    normalize_config(c)
    return c, load_tokenizer(c)


def _specials(tok) -> set[int]:
    ids = set(tok.all_special_ids)
    for i, t in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def _make_example(tok, where: str, ids: list[int], labels: list[int], eot_id: int | None,
                  specials: set[int]) -> Example:
    return Example(where, list(ids), list(labels), tok.convert_ids_to_tokens(list(ids)),
                   [i in specials for i in ids], [p for p, i in enumerate(ids) if eot_id is not None and i == eot_id])


def build_preview(res, n: int = 5, stage_name: str | None = None, rows: list[dict] | None = None,
                  origins: list[str] | None = None) -> Preview:
    """Tokenize the first n prepared train rows of a stage with Axolotl's strategy for its config."""
    st = _stage(res, stage_name)
    notes = []
    if rows is None:
        prepared = prepare(res, quiet=True, tokens=False, write_report=False)
        pb = prepared[st.data_block]
        rows = []
        with open(pb.files["train"], encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= n:
                    break
                rows.append(json.loads(line))
        omap = pb.dir / "origins.json"
        origins = json.loads(omap.read_text()).get("train", []) if omap.is_file() else []
    rows = rows[:n]
    origins = list(origins or [])
    cfg, note = _local_base(res, st.config)
    if note:
        notes.append(note)
    with _quiet():
        # `tok` is the tokenizer Axolotl trains with (its special-token changes applied); `own` is the model's.
        c, tok = axolotl_setup(cfg)
        own = load_tokenizer(c.tokenizer_config or c.base_model)
    stage_tpl, origin = stage_template(cfg, own)
    template = stage_tpl or own.chat_template
    eot = end_of_turn_token(tok, template) if template else None
    eot_id = tok.convert_tokens_to_ids(eot) if eot else None
    specials = _specials(tok)
    examples = []
    with _quiet():
        if st.kind in PREFERENCE_KINDS:
            transform = _preference_transform(st, c)
            # KTO's prepared rows are unpaired examples (runner.preference), the others chosen/rejected pairs.
            unpaired = preference.METHODS[st.kind].rows == "unpaired"
            if unpaired:
                notes.append("kto examples: the prompt is masked; a desirable example's completion is trained "
                             "towards, an undesirable one's away from (TRL's KTO loss)")
            else:
                notes.append("preference pairs: the prompt is masked, the chosen answer is trained towards and the "
                             "rejected one away from (TRL computes the loss on both answers)")
            for i, row in enumerate(rows):
                out = transform(dict(row)) if unpaired else transform(row, tokenizer=tok)
                where = origins[i] if i < len(origins) else f"row {i + 1}"
                p = tok(out["prompt"], add_special_tokens=False)["input_ids"]
                if unpaired:
                    done = tok(out["completion"], add_special_tokens=False)["input_ids"]
                    ex = _make_example(tok, f"{where} ({'desirable' if out['label'] else 'undesirable'})",
                                       p + done, [IGNORE] * len(p) + done, eot_id, specials)
                else:
                    ch = tok(out["chosen"], add_special_tokens=False)["input_ids"]
                    ex = _make_example(tok, where, p + ch, [IGNORE] * len(p) + ch, eot_id, specials)
                    ex.rejected_ids = tok(out["rejected"], add_special_tokens=False)["input_ids"]
                examples.append(ex)
        else:
            from axolotl.prompt_strategies import load

            strategy = load(c.datasets[0]["type"], tok, c, c.datasets[0])
            for i, row in enumerate(rows):
                out = strategy.tokenize_prompt(row)
                examples.append(_make_example(tok, origins[i] if i < len(origins) else f"row {i + 1}",
                                              out["input_ids"], out["labels"], eot_id, specials))
    pv = Preview(st.name, st.kind, str(c.tokenizer_config or c.base_model), eot, eot_id, tok.eos_token,
                 int(c.sequence_len or 2048), examples, notes=notes, tokenizer_obj=tok)
    pv.warnings += analyse(examples, eot, eot_id)
    long = [e.where for e in examples if len(e.input_ids) > pv.sequence_len]
    if long:
        pv.warnings.append(f"{len(long)} previewed example(s) are longer than sequence_len {pv.sequence_len} "
                           f"and Axolotl {c.excess_length_strategy or 'drop'}s them (first: {long[0]})")
    empty = [e.where for e in examples if not e.trained]
    if empty:
        pv.warnings.append(f"{len(empty)} example(s) have no trained token at all (first: {empty[0]})")
    with _quiet():
        stripped = template_without_default_system(own) if own.chat_template else None
        default = default_system_prompt(own) if own.chat_template else None
    tn = template_note(stage_tpl, own.chat_template, stripped, default,
                       "chat_template_jinja" if origin.endswith("(chat_template_jinja)") else origin)
    if tn:
        pv.warnings.append(tn)
    return pv


def _preference_transform(st, c):
    """Axolotl's transform for a preference stage's prepared rows: the loader its data step uses for the method
    (axolotl.utils.data.rl), so the preview shows the text the trainer gets."""
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.prompt_strategies.kto import load as load_kto
    from axolotl.prompt_strategies.orpo import load as load_orpo

    kind_type = c.datasets[0]["type"]
    loader = {"orpo": load_orpo, "kto": load_kto}.get(st.kind, load_dpo)
    transform = loader("user_defined.default" if isinstance(kind_type, dict) else kind_type, c, dataset_idx=0)
    if isinstance(transform, tuple):  # (transform_fn, dataset map kwargs)
        transform = transform[0]
    if transform is None:
        raise TunebookError(f"stage '{st.name}': Axolotl has no {st.kind} transform for dataset type {kind_type}")
    return transform


# --------------------------------------------------------------------------------------------- display


def _segments(tok, ex: Example, ids: list[int], labels: list[int]):
    """(text, trained, special) runs: a new run starts at every special token and where training flips."""
    specials = set(i for i, s in zip(ex.input_ids, ex.special) if s)
    run, out = [], []
    cur = None
    for i, lab in zip(ids, labels):
        key = (lab != IGNORE, i in specials)
        if i in specials or key != cur:
            if run:
                out.append((tok.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), cur[0], cur[1]))
            run, cur = [], key
        run.append(i)
        if i in specials:
            out.append((tok.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), key[0], True))
            run, cur = [], None
    if run:
        out.append((tok.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), cur[0], cur[1]))
    return out


def render(pv: Preview, console, markers: bool | None = None) -> None:
    """Print a preview with rich: trained bold green, masked dim, special tokens highlighted."""
    tok = pv.tokenizer_obj
    from rich.rule import Rule
    from rich.text import Text

    if markers is None:
        markers = not console.is_terminal
    console.print(f"[bold]preview[/] of stage [bold]{pv.stage}[/] ({pv.kind}) · tokenizer {pv.tokenizer} · "
                  f"sequence_len {pv.sequence_len} · end of turn {pv.eot or '?'} · EOS {pv.eos}")
    legend = Text("legend: ")
    legend.append("trained", style="bold green")
    legend.append(" · ")
    legend.append("masked (label -100)", style="dim")
    legend.append(" · ")
    legend.append("<special>", style="bold black on green")
    legend.append(" trained special token · ")
    legend.append("<special>", style="reverse dim")
    legend.append(" masked special token")
    if markers:
        legend.append(" · without colour, trained text is between ⟦ and ⟧")
    console.print(legend)
    for k, ex in enumerate(pv.examples, 1):
        eot_state = ("—" if not ex.eot_positions else ("trained ✓" if ex.eot_trained else "masked ✗"))
        console.print(Rule(style="dim"))
        console.print(f"[bold]example {k}/{len(pv.examples)}[/] · {ex.where} · {len(ex.input_ids)} tokens: "
                      f"{ex.trained} trained, {len(ex.input_ids) - ex.trained} masked · {pv.eot} {eot_state}",
                      highlight=False)
        text = Text()
        in_trained = False
        for seg, trained, special in _segments(tok, ex, ex.input_ids, ex.labels):
            if markers and trained != in_trained:
                text.append("⟦" if trained else "⟧")
                in_trained = trained
            style = ("bold black on green" if trained else "reverse dim") if special else (
                "bold green" if trained else "dim")
            text.append(seg, style=style)
        if markers and in_trained:
            text.append("⟧")
        console.print(text, highlight=False)
        if ex.rejected_ids is not None:
            rej = Text("rejected: ", style="bold red")
            rej.append(tok.decode(ex.rejected_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), style="red")
            console.print(rej, highlight=False)
    console.print(Rule(style="dim"))
    if pv.eot and pv.examples:
        n_ok = sum(1 for e in pv.examples if e.eot_trained)
        colour = "green" if n_ok == len(pv.examples) else ("red" if n_ok == 0 else "yellow")
        console.print(f"[{colour}]end of turn {pv.eot} trained in {n_ok} of {len(pv.examples)} examples[/]")
    for note in pv.notes:
        console.print(f"[cyan]note:[/] {note}")
    for w in pv.warnings:
        console.print(f"[yellow]warning:[/] {w}")

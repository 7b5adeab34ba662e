"""Apply the chat-template checks of `runner.chat_template` to a recipe: fix what can be fixed, say what was done."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from runner.chat_template import inspect_tokenizer, stage_template, template_without_default_system
from runner.errors import TunebookError
from runner.recipe.load import Recipe, looks_like_path
from runner.tokenizer import has_tokenizer, load_tokenizer


def _local_model_dir(rec: Recipe) -> Path | None:
    base = rec.data["base_model"]
    if looks_like_path(base):
        p = rec.resolve_path(base)
        return p if has_tokenizer(p) else None
    try:  # a hub id already in the local cache
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(base, local_files_only=True, allow_patterns=["*.json", "*.jinja"]))
        return p if (p / "tokenizer_config.json").is_file() else None
    except Exception:
        return None


# The recipe keys that choose the chat template (a stage's own `axolotl:` may choose too: stage_template reads the
# stage's final config wherever a template is used; the checks here run once per recipe, with the recipe's choice).
TEMPLATE_KEYS = ("chat_template", "chat_template_jinja")


@lru_cache(maxsize=16)
def _inspect(model_dir: str, chosen: str | None):
    tok = load_tokenizer(model_dir, local_only=True)
    rep = inspect_tokenizer(tok, Path(model_dir), chosen)
    stripped = template_without_default_system(tok) if rep.default_system and chosen is None else None
    return rep, stripped


def chosen_template(rec: Recipe, model_dir: Path) -> tuple[str | None, bool]:
    """(template text, whether the recipe chose it): the template the recipe's `axolotl:` names, or the model's
    own (None: the tokenizer's). Raises TunebookError, with the fix, when there is none to train with (a base
    model whose tokenizer has no template and a recipe that names none) or the named one is unknown."""
    asked = {k: v for k, v in (rec.data.get("axolotl") or {}).items() if k in TEMPLATE_KEYS}
    tok = load_tokenizer(model_dir, local_only=True)
    try:
        template, _ = stage_template(asked, tok, str(rec.data["base_model"]))
    except TunebookError as exc:
        key = ("axolotl", next(iter(asked))) if asked else ("base_model",)
        fix = exc.fix if asked else (f"{exc.fix} A base model has none: name the format its family uses, e.g. "
                                     "gemma3 for Gemma 3, llama3 for Llama 3, chatml for most others.")
        raise TunebookError(exc.what, where=rec.where(*key), fix=fix) from None
    return template, bool(asked)


def template_settings(rec: Recipe) -> tuple[dict, dict, list[str], str | None]:
    """Axolotl keys that make training teach the stop token of the template it trains with (the recipe's choice
    or the model's own), and drop an injected default system prompt unless the recipe sets its own. Returns
    (keys, reasons, notes, the template the rows are rendered with: None for the tokenizer's own)."""
    model_dir = _local_model_dir(rec)
    if model_dir is None:
        return {}, {}, [f"template check skipped: {rec.data['base_model']} is not on this machine yet "
                        "(it runs before training once the model is downloaded)"], None
    template, chosen = chosen_template(rec, model_dir)
    rep, stripped = _inspect(str(model_dir), template if chosen else None)
    keys, why, notes = {}, {}, []
    special = {}
    if rep.eos_mismatch:
        special["eos_token"] = rep.end_of_turn
        notes.append(f"template: EOS is {rep.eos_token} but turns end with {rep.end_of_turn}; "
                     f"training uses {rep.end_of_turn} as EOS so the model learns to stop")
    if rep.pad_token is None:
        special["pad_token"] = rep.end_of_turn or rep.eos_token
        notes.append(f"template: no pad token; using {special['pad_token']}")
    if special:
        keys["special_tokens"] = special
        why["special_tokens"] = "the chat template's end-of-turn token must be the EOS that training teaches"
    if rep.end_of_turn:
        keys["eot_tokens"] = [rep.end_of_turn]
        why["eot_tokens"] = f"{rep.end_of_turn} ends every assistant turn in the chat template: train on it"
    if rep.default_system and "system_prompt" not in rec.data:
        if stripped:
            keys["chat_template"] = "jinja"
            keys["chat_template_jinja"] = stripped
            why["chat_template"] = (f"the model's template injects the system prompt \"{rep.default_system}\" "
                                    "into every example; tunebook trains without it (set system_prompt to choose one)")
            notes.append(f"template: removed the injected default system prompt \"{rep.default_system[:60]}\" "
                         "(set `system_prompt:` in the recipe to use one)")
        else:
            notes.append(f"template: the chat template injects \"{rep.default_system[:60]}\" into every example "
                         "and could not be removed automatically; set `system_prompt:` to override it")
    for p in rep.problems:
        if "pad token" not in p and "never learns" not in p and "run on" not in p:
            notes.append(f"template: {p}")
    return keys, why, notes, keys.get("chat_template_jinja") or template


def recipe_model_dir(rec: Recipe) -> Path | None:
    """The local folder of the recipe's base model, if it is on this machine."""
    return _local_model_dir(rec)

"""The chat template a stage trains with, and chat-template hygiene, for any model.

`stage_template` is the one answer to "which template does this stage train with?" (Axolotl's rules, read
without importing Axolotl): the data check counts tokens with it, the preview shows it, eval prompts with it.
A template that cannot be found or rendered is a TunebookError, never a quiet fallback to the tokenizer's own
(that would measure, or evaluate, a model in a format it was not trained in).

Three silent failures are caught here before a GPU hour is spent:
- the token that ends an assistant turn in the chat template is not the tokenizer's EOS (or not among the
  generation EOS ids), so training teaches one token and generation waits for another: answers never stop;
- the template injects a default system prompt into every example (it costs tokens and bakes a persona in);
- no pad token.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runner.errors import TunebookError
from runner.tokenizer import load_tokenizer

SENTINEL_USER = "Tunebook-probe-question-7Q"
SENTINEL_ANSWER = "Tunebook-probe-answer-9Z"
SENTINEL_SYSTEM = "Tunebook-probe-system-3X"


@dataclass
class TemplateReport:
    """What the checks found about one tokenizer."""

    end_of_turn: str | None
    eos_token: str | None
    eos_ids: list[int]
    end_of_turn_id: int | None
    pad_token: str | None
    default_system: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def eos_mismatch(self) -> bool:
        """Training teaches the tokenizer's EOS; the template ends turns with another token."""
        return self.end_of_turn is not None and self.eos_token != self.end_of_turn

    @property
    def stop_mismatch(self) -> bool:
        """Generation's stop ids do not include the end-of-turn token."""
        return self.end_of_turn is not None and self.end_of_turn_id not in self.eos_ids


def render(tok, messages, template=None, gen=False) -> str:
    """`messages` as text in a chat template (None: the tokenizer's own), with the assistant's turn opened when
    `gen`."""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                   chat_template=template)


# ------------------------------------------------------------------------------------ the stage's template

JINJA, TOKENIZER_DEFAULT, FALLBACK_PREFIX = "jinja", "tokenizer_default", "tokenizer_default_fallback_"
PROBE = [{"role": "user", "content": SENTINEL_USER}, {"role": "assistant", "content": SENTINEL_ANSWER}]


def named_template(name: str) -> str | None:
    """One of Axolotl's built-in chat templates by name, read without importing Axolotl (and torch)."""
    spec = importlib.util.find_spec("axolotl")
    if not spec or not spec.submodule_search_locations:
        return None
    f = Path(spec.submodule_search_locations[0]) / "utils" / "chat_templates" / "templates" / f"{name}.jinja"
    return f.read_text(encoding="utf-8") if f.is_file() else None


def _choice(config: dict) -> tuple[str, str | None]:
    """(chat_template choice, chat_template_jinja) as Axolotl reads them: the first dataset's own choice wins
    over the config's; chat_template_jinja without a choice means jinja."""
    ds = next(iter(config.get("datasets") or []), None)
    src = ds if isinstance(ds, dict) and ds.get("chat_template") else config
    choice, jinja = src.get("chat_template"), src.get("chat_template_jinja")
    if not choice:
        choice = JINJA if jinja else TOKENIZER_DEFAULT
    return str(choice), jinja


def stage_template(config: dict, tok, source: str | None = None) -> tuple[str | None, str]:
    """The chat template a stage's Axolotl config trains with: (template, where it comes from), template None
    meaning the tokenizer's own. `source` names the tokenizer in messages.

    Raises TunebookError when the template cannot be found (no chat_template_jinja for jinja, an unknown name,
    a tokenizer without a template) or cannot render a user/assistant exchange: Axolotl would stop on it too."""
    source = source or str(getattr(tok, "name_or_path", "") or "the tokenizer")
    choice, jinja = _choice(config)
    has_own = bool(getattr(tok, "chat_template", None))
    fix_named = "Set a template in the recipe, e.g. axolotl: {chat_template: chatml}."
    if choice == JINJA:
        if not jinja:
            raise TunebookError("the stage sets chat_template: jinja but no chat_template_jinja",
                                fix="Give the template (or a file holding it) in axolotl: {chat_template_jinja: ...}, "
                                    "or choose a named template such as chatml.")
        if os.path.isfile(str(jinja)):
            jinja = Path(jinja).read_text(encoding="utf-8")
        template, origin = jinja, "recipe (chat_template_jinja)"
    elif choice == TOKENIZER_DEFAULT or (choice.startswith(FALLBACK_PREFIX) and has_own):
        if not has_own:
            raise TunebookError(f"{source} has no chat template and the stage sets none", fix=fix_named)
        template, origin = None, "tokenizer's own"
    else:
        name = choice[len(FALLBACK_PREFIX):] if choice.startswith(FALLBACK_PREFIX) else choice
        template, origin = named_template(name), f"Axolotl's {name}"
        if template is None:
            installed = importlib.util.find_spec("axolotl") is not None
            raise TunebookError(
                f"chat template '{name}' not found: " + ("Axolotl has no built-in template of that name"
                                                          if installed else "Axolotl is not installed here"),
                fix="Use one of Axolotl's template names (chatml, llama3, mistral_v7_tekken, ...), "
                    "chat_template: jinja with chat_template_jinja, or tokenizer_default.")
    try:
        render(tok, PROBE, template)
    except Exception as exc:  # noqa: BLE001 - any Jinja or template error means training cannot use it
        raise TunebookError(f"the chat template ({origin}) cannot render a user/assistant exchange: "
                            f"{type(exc).__name__}: {exc}", fix=fix_named) from None
    return template, origin


# Token counts per tokenizer and template, by conversation content: resolve counts the training rows to derive
# the sequence length, the data check counts them again after its checks; each row is rendered and tokenized once.
_LENGTHS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _digest(obj) -> bytes:
    return hashlib.blake2b(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


def count_tokens(tok, convs: list[list[dict]], template: str | None,
                 advance: Callable[[int], None] = lambda n: None, batch: int = 256) -> list[int]:
    """Tokens of each conversation rendered through the chat template (special tokens included).

    Remembered within the process per tokenizer and template, so a row counted once is not counted again."""
    try:
        memo = _LENGTHS.setdefault(tok, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: count without remembering
        memo = {}
    tkey = _digest(template if template is not None else getattr(tok, "chat_template", None))
    keys = [(tkey, _digest(c)) for c in convs]
    first: dict = {}  # conversations not counted yet: key -> index of their first occurrence
    for i, k in enumerate(keys):
        if k not in memo and k not in first:
            first[k] = i
    todo = list(first.items())
    if len(todo) < len(keys):
        advance(len(keys) - len(todo))
    for b in range(0, len(todo), batch):
        chunk = todo[b:b + batch]
        texts = tok.apply_chat_template([convs[i] for _, i in chunk], tokenize=False, chat_template=template)
        for (k, _), ids in zip(chunk, tok(texts, add_special_tokens=False)["input_ids"]):
            memo[k] = len(ids)
        advance(len(chunk))
    return [memo[k] for k in keys]


# ------------------------------------------------------------------------------------------------ hygiene


def end_of_turn_token(tok, template: str | None = None) -> str | None:
    """The special token the chat template puts right after an assistant message, e.g. <|im_end|>."""
    text = render(tok, [{"role": "user", "content": SENTINEL_USER},
                         {"role": "assistant", "content": SENTINEL_ANSWER}], template)
    rest = text[text.find(SENTINEL_ANSWER) + len(SENTINEL_ANSWER):]
    specials = sorted({t for t in tok.all_special_tokens} | set(tok.get_added_vocab()), key=len, reverse=True)
    stripped = rest.lstrip()
    for s in specials:
        if s and stripped.startswith(s):
            return s
    return None


def default_system_prompt(tok, template: str | None = None) -> str | None:
    """Text of a system turn the template adds when the conversation has none (None if it adds nothing)."""
    no_sys = render(tok, [{"role": "user", "content": SENTINEL_USER}], template)
    # Whatever precedes the user's text, less special tokens and role names, was injected by the template.
    words = no_sys[:no_sys.find(SENTINEL_USER)]
    for s in sorted(set(tok.all_special_tokens) | set(tok.get_added_vocab()), key=len, reverse=True):
        if s:
            words = words.replace(s, " ")
    words = re.sub(r"\b(system|user)\b", " ", words).strip()
    return words or None


def template_without_default_system(tok) -> str | None:
    """The tokenizer's template with its default-system-prompt block removed, verified by rendering.

    Returns None when the injection can't be removed safely (then pass an explicit system message)."""
    src = tok.chat_template
    default = default_system_prompt(tok)
    if not src or not default or default not in src:
        return None
    pos = src.find(default)
    start = src.rfind("{%", 0, pos)
    while start != -1 and not re.match(r"\{%-?\s*if\b", src[start:]):
        start = src.rfind("{%", 0, start)
    end_m = re.compile(r"\{%-?\s*endif\s*-?%\}").search(src, pos)
    if start == -1 or not end_m:
        return None
    candidate = src[:start] + src[end_m.end():]
    try:
        user = [{"role": "user", "content": SENTINEL_USER}, {"role": "assistant", "content": SENTINEL_ANSWER}]
        sys_conv = [{"role": "system", "content": SENTINEL_SYSTEM}] + user
        if default_system_prompt(tok, candidate) is not None:
            return None
        if render(tok, sys_conv, candidate) != render(tok, sys_conv):
            return None
        if end_of_turn_token(tok, candidate) != end_of_turn_token(tok):
            return None
    except Exception:
        return None
    return candidate


def _eos_ids(tok, model_dir: Path | None) -> list[int]:
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if model_dir is not None:
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    return sorted(set(ids))


def inspect_tokenizer(tok, model_dir: Path | None = None, template: str | None = None) -> TemplateReport:
    """Run every check on a loaded tokenizer (and the model folder's generation_config, when given), with the
    chat template training will use: `template` (a recipe's choice), else the tokenizer's own."""
    if not template and not tok.chat_template:
        return TemplateReport(None, tok.eos_token, _eos_ids(tok, model_dir), None, tok.pad_token, None,
                              ["the tokenizer has no chat template; set one with axolotl: {chat_template: chatml}"])
    eot = end_of_turn_token(tok, template)
    eot_id = tok.convert_tokens_to_ids(eot) if eot else None
    rep = TemplateReport(eot, tok.eos_token, _eos_ids(tok, model_dir), eot_id, tok.pad_token,
                         default_system_prompt(tok, template))
    if rep.eos_mismatch:
        rep.problems.append(
            f"the chat template ends assistant turns with {eot} (id {eot_id}) but the tokenizer's EOS is "
            f"{tok.eos_token} (id {tok.eos_token_id}): training teaches {tok.eos_token} at the end of answers, "
            f"so the model never learns to stop")
    if rep.stop_mismatch:
        rep.problems.append(
            f"generation stops on token ids {rep.eos_ids} but the chat template ends turns with {eot} "
            f"(id {eot_id}): answers would run on")
    if tok.pad_token is None:
        rep.problems.append("the tokenizer has no pad token")
    return rep


def fix_tokenizer(model_dir: str | Path) -> list[str]:
    """Repair a saved model folder in place: EOS = the template's end-of-turn token, a pad token, and
    config.json / generation_config.json ids to match. Returns what was changed, one line each."""
    model_dir = Path(model_dir)
    tok = load_tokenizer(model_dir, private=True)  # changed and saved below: never the shared one
    rep = inspect_tokenizer(tok, model_dir)
    changed = []
    if rep.end_of_turn and tok.eos_token != rep.end_of_turn:
        changed.append(f"EOS token {tok.eos_token} -> {rep.end_of_turn} (the chat template's end of turn)")
        tok.eos_token = rep.end_of_turn
    if tok.pad_token is None:
        # A pad distinct from EOS keeps collators that mask pad labels from masking EOS too.
        pad = tok.unk_token if tok.unk_token and tok.unk_token != tok.eos_token else tok.eos_token
        changed.append(f"pad token (none) -> {pad}")
        tok.pad_token = pad
    if not changed:
        return []
    tok.save_pretrained(model_dir)
    for name in ("config.json", "generation_config.json"):
        f = model_dir / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            cfg["eos_token_id"] = tok.eos_token_id
            cfg["pad_token_id"] = tok.pad_token_id
            f.write_text(json.dumps(cfg, indent=2) + "\n")
    return changed

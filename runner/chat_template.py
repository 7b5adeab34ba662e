"""Chat-template hygiene, for any model.

Three silent failures are caught here before a GPU hour is spent:
- the token that ends an assistant turn in the chat template is not the tokenizer's EOS (or not among the
  generation EOS ids), so training teaches one token and generation waits for another: answers never stop;
- the template injects a default system prompt into every example (it costs tokens and bakes a persona in);
- no pad token.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

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


def _render(tok, messages, template=None, gen=False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                   chat_template=template)


def end_of_turn_token(tok, template: str | None = None) -> str | None:
    """The special token the chat template puts right after an assistant message, e.g. <|im_end|>."""
    text = _render(tok, [{"role": "user", "content": SENTINEL_USER},
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
    no_sys = _render(tok, [{"role": "user", "content": SENTINEL_USER}], template)
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
        if _render(tok, sys_conv, candidate) != _render(tok, sys_conv):
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


def inspect_tokenizer(tok, model_dir: Path | None = None) -> TemplateReport:
    """Run every check on a loaded tokenizer (and the model folder's generation_config, when given)."""
    if not tok.chat_template:
        return TemplateReport(None, tok.eos_token, _eos_ids(tok, model_dir), None, tok.pad_token, None,
                              ["the tokenizer has no chat template; set one with axolotl: {chat_template: chatml}"])
    eot = end_of_turn_token(tok)
    eot_id = tok.convert_tokens_to_ids(eot) if eot else None
    rep = TemplateReport(eot, tok.eos_token, _eos_ids(tok, model_dir), eot_id, tok.pad_token,
                         default_system_prompt(tok))
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
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
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

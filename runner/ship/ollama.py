"""An Ollama `Modelfile` for an exported GGUF: the trained chat template written as Ollama's Go template, its
end-of-turn token(s) as stop parameters, and the recipe's system prompt.

Ollama does not read the GGUF's Jinja template; it renders the prompt with the Modelfile's TEMPLATE (Go's
text/template over `.Messages`). A TEMPLATE that differs from the trained one, or a stop token the model never
learned, gives the model that never stops (ollama#8363). So the TEMPLATE is not hand-written per model family:
it is read off the trained Jinja template by rendering probe conversations (`chat_turns`), as the text around
each role's content, and checked by rendering other conversations both ways; a template this cannot express
(one that injects text depending on position, trims content, ...) is refused rather than approximated.

`parse_modelfile` reads a Modelfile back (export checks its own output with it)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from runner.errors import TunebookError

ROLES = ("system", "user", "assistant")
# Sentinels: content no template changes (no whitespace to trim, no markup).
_S, _U1, _A1, _U2, _A2, _U3 = (f"Tunebook{x}Probe7Q" for x in ("Sys", "UserOne", "AsstOne", "UserTwo", "AsstTwo",
                                                                 "UserThree"))


@dataclass(frozen=True)
class ChatTurns:
    """A chat template as text around each message: `start` once at the beginning, then per message
    `pre[role] + content + post[role]`, then `generation` (the assistant's header) when a reply is wanted."""

    start: str
    pre: dict
    post: dict
    generation: str

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages`, as the Go template written by `go_template` renders it."""
        text = self.start + "".join(self.pre[m["role"]] + m["content"] + self.post[m["role"]] for m in messages)
        return text + (self.generation if add_generation_prompt else "")


def _split(text: str, sentinels: list[str]) -> list[str]:
    """The text between the sentinels, in order (len(sentinels) + 1 pieces)."""
    pieces, rest = [], text
    for s in sentinels:
        i = rest.find(s)
        if i < 0:
            raise ValueError(f"the template dropped the message content {s}")
        pieces.append(rest[:i])
        rest = rest[i + len(s):]
    return pieces + [rest]


def _inside_token(text: str, at: int, specials: list[str]) -> bool:
    """Does position `at` fall strictly inside a special token of `text`?"""
    for s in specials:
        start = text.find(s)
        while start >= 0:
            if start < at < start + len(s):
                return True
            start = text.find(s, start + 1)
    return False


def _common_suffix(texts: list[str], specials: list[str]) -> str:
    """The longest common suffix of `texts` that starts on a special-token boundary in each (`>` ending both
    <|begin_of_text|> and <|eot_id|> is not part of the next turn's header)."""
    n = 0
    while all(len(t) > n for t in texts) and len({t[len(t) - n - 1] for t in texts}) == 1:
        n += 1
    while n and any(_inside_token(t, len(t) - n, specials) for t in texts):
        n -= 1
    return texts[0][len(texts[0]) - n:] if n else ""


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(what)
    return text[len(prefix):]


def _derive(render, specials: list[str]) -> ChatTurns:
    user_only = _split(render([("user", _U1)], False), [_U1])                                  # [start+upre, upost]
    sys_user = _split(render([("system", _S), ("user", _U1)], False), [_S, _U1])             # [start+spre, spost+upre, upost]
    multi = _split(render([("user", _U1), ("assistant", _A1), ("user", _U2)], False), [_U1, _A1, _U2])
    # multi: [start+upre, upost+apre, apost+upre, upost]
    user_pre = _common_suffix([user_only[0], multi[2], sys_user[1]], specials)
    start = user_only[0][:len(user_only[0]) - len(user_pre)]
    user_post = user_only[1]
    asst_pre = _strip_prefix(multi[1], user_post, "the text after a user message depends on what follows it")
    asst_post = multi[2][:len(multi[2]) - len(user_pre)]
    sys_pre = _strip_prefix(sys_user[0], start, "a system message changes the start of the prompt")
    sys_post = sys_user[1][:len(sys_user[1]) - len(user_pre)]
    with_gen = render([("user", _U1)], True)
    generation = _strip_prefix(with_gen, render([("user", _U1)], False),
                               "the generation prompt changes the text before it")
    return ChatTurns(start, {"system": sys_pre, "user": user_pre, "assistant": asst_pre},
                     {"system": sys_post, "user": user_post, "assistant": asst_post}, generation)


# Conversations the derived turns must render exactly as the Jinja template does.
CHECKS = [
    [("user", _U1)],
    [("system", _S), ("user", _U1)],
    [("user", _U1), ("assistant", _A1), ("user", _U2)],
    [("system", _S), ("user", _U1), ("assistant", _A1), ("user", _U2), ("assistant", _A2), ("user", _U3)],
    [("user", "Two words\nand a line, {{ braces }} and \"quotes\".")],
    [("user", "  spaces around, kept as they are \n")],  # a template that trims content is not text-around
]


def chat_turns(tok, template: str | None) -> ChatTurns:
    """The trained chat template (`template`, None: the tokenizer's own, as runner.chat_template.stage_template
    returns it) as ChatTurns; TunebookError when the template is not of that shape."""
    def render(msgs, gen):
        return tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs], tokenize=False,
                                       add_generation_prompt=gen, chat_template=template)
    fix = ("Export --format gguf and write the Modelfile's TEMPLATE by hand (Ollama's Go template syntax), "
           "or train with a template of plain per-message markup such as chatml (axolotl: {chat_template: chatml}).")
    try:
        specials = sorted({*tok.all_special_tokens, *tok.get_added_vocab()}, key=len, reverse=True)
        turns = _derive(render, specials)
        for conv in CHECKS:
            for gen in (False, True):
                msgs = [{"role": r, "content": c} for r, c in conv]
                if turns.render(msgs, gen) != render(conv, gen):
                    raise ValueError(f"it renders the conversation {[r for r, _ in conv]} differently "
                                     "from text around each message")
    except (ValueError, TypeError) as exc:
        raise TunebookError(f"the trained chat template cannot be written as an Ollama TEMPLATE: {exc}",
                            fix=fix) from None
    except Exception as exc:  # noqa: BLE001 - a Jinja error on a probe conversation (e.g. a template without system)
        raise TunebookError(f"the trained chat template cannot be written as an Ollama TEMPLATE: rendering a probe "
                            f"conversation failed ({type(exc).__name__}: {exc})", fix=fix) from None
    return turns


def _literal(text: str) -> str:
    """Literal text inside a Go template: as is, or as a quoted string action when it holds `{{` or `}}`."""
    if "{{" in text or "}}" in text:
        return "{{ " + json.dumps(text) + " }}"  # JSON string escapes are valid Go string literal escapes
    return text


def go_template(turns: ChatTurns) -> str:
    """The TEMPLATE for Ollama (Go text/template over .Messages, each with .Role and .Content)."""
    # No `{{-`/`-}}` trim markers: they would eat the newlines that are part of the trained markup.
    out = [_literal(turns.start), "{{ range .Messages }}"]
    for i, role in enumerate(ROLES):
        out.append(("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}'
                   + _literal(turns.pre[role]) + "{{ .Content }}" + _literal(turns.post[role]))
    out += ["{{ end }}", "{{ end }}", _literal(turns.generation)]
    return "".join(out)


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise TunebookError(f'{what} contains """, which a Modelfile cannot quote',
                            fix='Remove the triple quote from it, or write the Modelfile by hand.')
    return f'"""{text}"""'


def modelfile(gguf_name: str, turns: ChatTurns, stops: list[str], system: str | None,
              parameters: dict | None = None, comment: str = "") -> str:
    """Modelfile text: FROM ./<gguf>, TEMPLATE, one PARAMETER stop per stop token, SYSTEM when given, then the
    other parameters."""
    lines = [f"# {ln}".rstrip() for ln in comment.splitlines()] if comment else []
    lines += [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(go_template(turns), 'the chat template')}"]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'the system prompt')}")
    for k, v in (parameters or {}).items():
        lines.append(f"PARAMETER {k} {v}")
    return "\n".join(lines) + "\n"


_INSTR = re.compile(r"^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE|REQUIRES)\s+", re.I)


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction in upper case, argument) pairs of a Modelfile, as Ollama reads them: `#` comment lines,
    arguments in \"\"\"triple\"\"\" quotes over several lines or in "double" quotes; PARAMETER arguments keep
    their name ("stop \\"<|im_end|>\\"" -> `stop <|im_end|>`). ValueError on what Ollama would reject."""
    out, i = [], 0
    while i < len(text):
        end = text.find("\n", i)
        line = text[i:] if end < 0 else text[i:end]
        nxt = len(text) if end < 0 else end + 1
        if not line.strip() or line.lstrip().startswith("#"):
            i = nxt
            continue
        m = _INSTR.match(line)
        if not m:
            raise ValueError(f"not a Modelfile instruction: {line[:60]!r}")
        cmd, rest_at = m.group(1).upper(), i + m.end()
        if cmd == "PARAMETER":
            name, _, value = line[m.end():].partition(" ")
            value = value.strip()
            if value.startswith('"'):
                value = json.loads(value)
            out.append((cmd, f"{name} {value}"))
            i = nxt
        elif text.startswith('"""', rest_at):
            close = text.find('"""', rest_at + 3)
            if close < 0:
                raise ValueError(f"{cmd}: unterminated triple quote")
            out.append((cmd, text[rest_at + 3:close]))
            after = text.find("\n", close)
            i = len(text) if after < 0 else after + 1
        else:
            value = line[m.end():].strip()
            out.append((cmd, json.loads(value) if value.startswith('"') else value))
            i = nxt
    return out

"""Render an Ollama Modelfile TEMPLATE for the tests, as Ollama would: with Go's own text/template when `go` is on
PATH (Ollama is a Go program and renders with it), else with `render_subset`, a strict reader of the few actions
tunebook's TEMPLATEs use (range .Messages, if / else if eq .Role "...", end, .Content, "string literals"), which
raises on anything else. tests/unit/ship/test_ollama.py checks that both give the same text where Go exists."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

GO_MAIN = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template      string      `json:"template"`
		Conversations [][]Message `json:"conversations"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	out := []string{}
	for _, msgs := range in.Conversations {
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": msgs}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def have_go() -> bool:
    return shutil.which("go") is not None


def render_go(template: str, conversations: list[list[dict]], workdir: Path) -> list[str]:
    """Each conversation rendered by Go's text/template (one `go run` for all)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "main.go").write_text(GO_MAIN)
    env = {"GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath"), "GO111MODULE": "off",
           "PATH": "/usr/bin:/bin:/usr/local/bin:/usr/lib/go/bin", "HOME": str(workdir)}
    r = subprocess.run(["go", "run", str(workdir / "main.go")], input=json.dumps(
        {"template": template, "conversations": conversations}), capture_output=True, text=True, env=env,
        timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _parse(template: str) -> list:
    """Template text -> nested nodes: str | ("content",) | ("range", body) | ("if", [(role | None, body), ...])."""
    pos, toks = 0, []
    for m in _ACTION.finditer(template):
        if m.start() > pos:
            toks.append(("text", template[pos:m.start()]))
        act = m.group(1)
        assert not act.startswith("-") and not act.endswith("-"), f"trim markers are not in the subset: {act!r}"
        toks.append(("act", act.strip()))
        pos = m.end()
    if pos < len(template):
        toks.append(("text", template[pos:]))

    def block(i, stop):
        nodes = []
        while i < len(toks):
            kind, val = toks[i]
            if kind == "text":
                nodes.append(val)
                i += 1
            elif val in stop or val.startswith("else if "):
                return nodes, i
            elif val == ".Content":
                nodes.append(("content",))
                i += 1
            elif val.startswith('"'):
                nodes.append(json.loads(val))
                i += 1
            elif val == "range .Messages":
                body, i = block(i + 1, {"end"})
                nodes.append(("range", body))
                i += 1
            elif val.startswith("if eq .Role "):
                branches, cond = [], val
                while True:
                    role = json.loads(cond.split("eq .Role ", 1)[1])
                    body, i = block(i + 1, {"end", "else"})
                    branches.append((role, body))
                    nxt = toks[i][1]
                    if nxt.startswith("else if eq .Role "):
                        cond = nxt
                        continue
                    if nxt == "else":
                        body, i = block(i + 1, {"end"})
                        branches.append((None, body))
                    break
                nodes.append(("if", branches))
                i += 1
            else:
                raise AssertionError(f"action not in the subset: {{{{ {val} }}}}")
        assert not stop, f"missing {stop}"
        return nodes, i

    nodes, end = block(0, set())
    assert end == len(toks), f"unexpected {toks[end][1]!r}"
    return nodes


def render_subset(template: str, messages: list[dict]) -> str:
    """One conversation rendered by the subset reader."""
    def run(nodes, msg):
        out = []
        for n in nodes:
            if isinstance(n, str):
                out.append(n)
            elif n[0] == "content":
                out.append(msg["content"])
            elif n[0] == "range":
                out += [run(n[1], m) for m in messages]
            else:
                body = next((b for role, b in n[1] if role is None or role == msg["role"]), [])
                out.append(run(body, msg))
        return "".join(out)
    return run(_parse(template), None)


def render(template: str, conversations: list[list[dict]], workdir: Path) -> tuple[list[str], str]:
    """(prompts, engine): Go's text/template when present, else the subset reader."""
    if have_go():
        return render_go(template, conversations, workdir), "go"
    return [render_subset(template, c) for c in conversations], "subset"

"""runner.ship.ollama: the trained chat template read off as text around each message, its Go TEMPLATE (rendered by
Go's text/template where `go` exists), the Modelfile and its parser, and the templates that are refused."""
from __future__ import annotations

import pytest

from runner.errors import TunebookError
from runner.ship import ollama
from runner.tokenizer import load_tokenizer
from tests import gotemplate
from tests.conftest import CHATML

CONVS = [
    [{"role": "user", "content": "How many days of leave?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": "Braces {{ .Content }} and \"\"\" quotes\n  and spaces "}],
]
# Llama-3's shape: a BOS once, headers around each role, turns ended by <|eot_id|> (here on the tiny tokenizer).
LLAMA3ISH = ("{{ '<|endoftext|>' }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '<|pad|>\n\n' + m['content'] "
             "+ '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|pad|>\n\n' }}"
             "{% endif %}")
INJECTS_SYSTEM = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a bot.<|im_end|>\n' }}"
                  "{% endif %}" + CHATML)
TRIMS = CHATML.replace("message['content']", "message['content'] | trim")
NO_SYSTEM = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ raise_exception('no system') }}"
             "{% endif %}{% endfor %}" + CHATML)


@pytest.fixture
def tok(tiny_base):
    return load_tokenizer(tiny_base, private=True)


def jinja(tok, template, conv, gen=True):
    return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, chat_template=template)


def test_chatml_turns(tok):
    t = ollama.chat_turns(tok, CHATML)
    assert t.start == ""
    assert t.pre == {r: f"<|im_start|>{r}\n" for r in ollama.ROLES}
    assert t.post == {r: "<|im_end|>\n" for r in ollama.ROLES}
    assert t.generation == "<|im_start|>assistant\n"
    for conv in CONVS:
        assert t.render(conv) == jinja(tok, CHATML, conv)
        assert t.render(conv, False) == jinja(tok, CHATML, conv, False)


def test_template_with_a_start_token(tok):
    t = ollama.chat_turns(tok, LLAMA3ISH)
    for conv in CONVS:
        assert t.render(conv) == jinja(tok, LLAMA3ISH, conv)
    assert t.render([]).startswith("<|endoftext|>")


@pytest.mark.parametrize("template, why", [
    (INJECTS_SYSTEM, "system message changes the start"),
    (TRIMS, "differently"),
    (NO_SYSTEM, "rendering a probe conversation failed"),
])
def test_refused_templates(tok, template, why):
    with pytest.raises(TunebookError) as e:
        ollama.chat_turns(tok, template)
    assert "cannot be written as an Ollama TEMPLATE" in str(e.value) and why in str(e.value)
    assert "--format gguf" in e.value.fix


@pytest.mark.parametrize("template", [CHATML, LLAMA3ISH])
def test_go_template_renders_as_jinja(tok, template, tmp_path):
    """The TEMPLATE, rendered by Go's text/template (Ollama's engine) and by the subset reader, is the trained
    template's prompt for every conversation, braces and quotes in the content included."""
    turns = ollama.chat_turns(tok, template)
    go = ollama.go_template(turns)
    assert "{{-" not in go and "-}}" not in go  # trim markers would eat the template's newlines
    expected = [jinja(tok, template, c) for c in CONVS]
    assert [gotemplate.render_subset(go, c) for c in CONVS] == expected
    if not gotemplate.have_go():
        pytest.skip("go is not installed: rendered by the subset reader only (apt-get install golang-go)")
    assert gotemplate.render_go(go, CONVS, tmp_path / "go") == expected


def test_literal_braces_in_markup_are_quoted(tok, tmp_path):
    template = CHATML.replace("'<|im_start|>' + message['role']", "'<|im_start|>{{' + message['role']")
    turns = ollama.chat_turns(tok, template)
    go = ollama.go_template(turns)
    assert '{{ "<|im_start|>{{user\\n" }}' in go  # as a Go string: the literal {{ is not an action
    expected = [jinja(tok, template, c) for c in CONVS]
    assert [gotemplate.render_subset(go, c) for c in CONVS] == expected
    if gotemplate.have_go():
        assert gotemplate.render_go(go, CONVS, tmp_path / "go") == expected


def test_modelfile_reads_back(tok):
    turns = ollama.chat_turns(tok, CHATML)
    text = ollama.modelfile("r-q8_0.gguf", turns, ["<|im_end|>", "<|endoftext|>"], "You answer HR questions.\nBriefly.",
                            {"temperature": 0}, comment="made by tunebook\nsecond line")
    assert text.startswith("# made by tunebook\n# second line\nFROM ./r-q8_0.gguf\n")
    assert ollama.parse_modelfile(text) == [
        ("FROM", "./r-q8_0.gguf"), ("TEMPLATE", ollama.go_template(turns)), ("PARAMETER", "stop <|im_end|>"),
        ("PARAMETER", "stop <|endoftext|>"), ("SYSTEM", "You answer HR questions.\nBriefly."),
        ("PARAMETER", "temperature 0")]
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()


def test_modelfile_without_system(tok):
    text = ollama.modelfile("m.gguf", ollama.chat_turns(tok, CHATML), ["<|im_end|>"], None)
    assert [k for k, _ in ollama.parse_modelfile(text)] == ["FROM", "TEMPLATE", "PARAMETER"]


def test_triple_quote_in_system_prompt_refused(tok):
    with pytest.raises(TunebookError, match='contains """'):
        ollama.modelfile("m.gguf", ollama.chat_turns(tok, CHATML), ["<|im_end|>"], 'Say """hi"""')


@pytest.mark.parametrize("text, msg", [
    ("FROM ./a.gguf\nTEMPLATE \"\"\"never closed\n", "unterminated"),
    ("FROM ./a.gguf\nBOGUS x\n", "not a Modelfile instruction"),
])
def test_parse_modelfile_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        ollama.parse_modelfile(text)

"""The chat-template detectors on the real SmolLM2 tokenizer: as the GGUF conversion leaves it, and as fixed."""
from __future__ import annotations

import shutil

import pytest

from runner.chat_template import (count_tokens, fix_tokenizer, inspect_tokenizer, named_template, stage_template,
                                  template_without_default_system)
from runner.errors import TunebookError


@pytest.fixture(scope="module")
def as_converted(tmp_path_factory, gguf_tokenizer):
    """The tokenizer exactly as transformers converts it from the GGUF file, saved to a folder (the conversion
    is made once per checkout: conftest's gguf_tokenizer)."""
    out = tmp_path_factory.mktemp("converted") / "tokenizer"
    shutil.copytree(gguf_tokenizer, out)
    return out


def _load(d):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d)


def test_gguf_conversion_has_the_eos_mismatch(as_converted):
    rep = inspect_tokenizer(_load(as_converted), as_converted)
    assert rep.end_of_turn == "<|im_end|>" and rep.end_of_turn_id == 2
    assert rep.eos_token == "<|im_start|>" and rep.eos_mismatch
    assert rep.pad_token is None
    assert any("never learns to stop" in p for p in rep.problems)
    assert any("no pad token" in p for p in rep.problems)


def test_fixed_tokenizer_passes(as_converted, tmp_path):
    d = tmp_path / "fixed"
    shutil.copytree(as_converted, d)
    changed = fix_tokenizer(d)
    assert any("EOS token <|im_start|> -> <|im_end|>" in c for c in changed)
    rep = inspect_tokenizer(_load(d), d)
    assert rep.eos_token == "<|im_end|>" and not rep.eos_mismatch and not rep.stop_mismatch
    assert rep.pad_token is not None and rep.pad_token != rep.eos_token
    assert fix_tokenizer(d) == []  # idempotent


def test_the_shipped_model_folder_is_fixed(smollm2):
    rep = inspect_tokenizer(_load(smollm2), smollm2)
    assert not rep.eos_mismatch and not rep.stop_mismatch and 2 in rep.eos_ids


@pytest.mark.parametrize("which", ["converted", "fixed"])
def test_injected_system_prompt_found_and_removed(which, as_converted, smollm2):
    tok = _load(as_converted if which == "converted" else smollm2)
    rep = inspect_tokenizer(tok)
    assert rep.default_system and rep.default_system.startswith("You are a helpful AI assistant named SmolLM")
    stripped = template_without_default_system(tok)
    assert stripped is not None and "SmolLM" not in stripped
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, chat_template=stripped)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    # A system prompt the recipe gives is still rendered.
    sys_text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                       tokenize=False, chat_template=stripped)
    assert sys_text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_a_template_without_injection_reports_none(tiny_llama):
    tok = _load(tiny_llama)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}")
    rep = inspect_tokenizer(tok)
    assert rep.default_system is None and rep.end_of_turn == "<|im_end|>"


# ------------------------------------------------------------------------------ the template a stage trains with


def test_named_axolotl_template_is_read_without_importing_axolotl():
    assert "<|im_start|>" in (named_template("chatml") or "")
    assert named_template("no-such-template") is None


def test_stage_template_follows_axolotls_choice(smollm2, tmp_path):
    tok = _load(smollm2)
    assert stage_template({}, tok) == (None, "tokenizer's own")
    assert stage_template({"chat_template": "tokenizer_default_fallback_chatml"}, tok) == (None, "tokenizer's own")
    chatml, origin = stage_template({"chat_template": "chatml"}, tok)
    assert origin == "Axolotl's chatml" and chatml == named_template("chatml")
    jinja = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert stage_template({"chat_template": "jinja", "chat_template_jinja": jinja}, tok)[0] == jinja
    assert stage_template({"chat_template_jinja": jinja}, tok)[0] == jinja          # jinja alone means jinja
    f = tmp_path / "t.jinja"
    f.write_text(jinja)
    assert stage_template({"chat_template": "jinja", "chat_template_jinja": str(f)}, tok)[0] == jinja
    # the dataset's own choice wins, as in Axolotl
    cfg = {"chat_template": "jinja", "chat_template_jinja": jinja, "datasets": [{"chat_template": "chatml"}]}
    assert stage_template(cfg, tok)[1] == "Axolotl's chatml"


@pytest.mark.parametrize("cfg,words", [
    ({"chat_template": "no-such-template"}, "not found"),
    ({"chat_template": "jinja"}, "no chat_template_jinja"),
    ({"chat_template": "jinja", "chat_template_jinja": "{% for m in messages %}"}, "cannot render"),
])
def test_a_template_that_cannot_be_found_or_rendered_is_an_error(smollm2, cfg, words):
    with pytest.raises(TunebookError, match=words):
        stage_template(cfg, _load(smollm2))


def test_eval_no_longer_falls_back_to_the_tokenizers_template(smollm2):
    """Before: evaluate.chat_template returned None (the tokenizer's own) when Axolotl could not find it."""
    from runner.evaluate.stage import chat_template

    with pytest.raises(TunebookError, match="no-such-template"):
        chat_template({"chat_template": "no-such-template"}, _load(smollm2))


def test_a_tokenizer_without_template_and_no_stage_template_is_an_error(tiny_llama):
    tok = _load(tiny_llama)
    tok.chat_template = None
    with pytest.raises(TunebookError, match="has no chat template"):
        stage_template({}, tok, "tiny")
    assert stage_template({"chat_template": "tokenizer_default_fallback_chatml"}, tok)[1] == "Axolotl's chatml"


def test_tokenizer_loaded_once_per_folder_and_private_copies(smollm2):
    from runner.tokenizer import load_tokenizer

    a = load_tokenizer(smollm2)
    assert load_tokenizer(str(smollm2) + "/") is a and load_tokenizer(smollm2, local_only=True) is a
    b = load_tokenizer(smollm2, private=True)
    b.padding_side = "left"
    assert b is not a and a.padding_side != "left"


def test_token_counts_are_remembered_per_template(smollm2):
    tok = _load(smollm2)
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in range(3)]
    seen = []
    first = count_tokens(tok, convs, None, advance=seen.append)
    calls = []
    orig = tok.__class__.__call__
    try:
        tok.__class__.__call__ = lambda self, *a, **k: calls.append(a) or orig(self, *a, **k)
        assert count_tokens(tok, convs + convs[:1], None, advance=seen.append) == first + first[:1]
        assert not calls                                     # nothing tokenized twice
        other = count_tokens(tok, convs, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
        assert len(calls) == 1 and other != first             # another template is counted anew
    finally:
        tok.__class__.__call__ = orig
    assert sum(seen) == 7

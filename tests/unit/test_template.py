"""The chat-template detectors on the real SmolLM2 tokenizer: as the GGUF conversion leaves it, and as fixed."""
from __future__ import annotations

import shutil

import pytest

from runner.chat_template import fix_tokenizer, inspect_tokenizer, template_without_default_system


@pytest.fixture(scope="module")
def as_converted(tmp_path_factory):
    """The tokenizer exactly as transformers converts it from the GGUF file, saved to a folder."""
    from transformers import AutoTokenizer

    from runner.models import gguf_path

    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("converted")
    tok.save_pretrained(out)
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

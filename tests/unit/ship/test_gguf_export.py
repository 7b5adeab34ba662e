"""`tunebook export --format gguf|ollama` on fabricated run folders: the refusals (no merge stage, not trained, a
failed gate, --quant with an archive format, no converter, a failing converter), the folder handed to llama.cpp's
converter (trained template, EOS = end of turn, byte-level vocabulary) and the Modelfile's stop tokens. The real
conversion, quantization and llama.cpp runs are in tests/e2e/test_export_gguf.py."""
from __future__ import annotations

import json
import shutil

import pytest

from runner.errors import TunebookError
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship import gguf_export
from tests.conftest import CHATML, make_project, tunebook

RECIPE = """
    name: faq
    base_model: ./models/base
    data: {{train: data/train.jsonl, format: alpaca, held_out: data/held.jsonl}}
    stages: [{stages}]
    {extra}
    """
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def project(tmp_path, tiny_base, stages="sft, eval, merge", merged=True, lock=None, extra="", template=None):
    files = {"data/train.jsonl": '{"instruction": "a", "output": "b"}\n',
             "data/held.jsonl": '{"instruction": "a", "output": "b"}\n'}
    root = make_project(tmp_path, {"faq": RECIPE.format(stages=stages, extra=extra)}, files)
    shutil.copytree(tiny_base, root / "models/base")
    run = root / "runs/faq"
    (run / "sft/output").mkdir(parents=True)
    (run / "sft/output/adapter_config.json").write_text('{"r": 8}')
    (run / "sft/output/adapter_model.safetensors").write_text("weights")
    if merged:
        shutil.copytree(tiny_base, run / "merge/merged")
        if template is not None:
            (run / "merge/merged/chat_template.jinja").write_text(template)
    (run / "tunebook.lock").write_text(json.dumps(lock or {"version": 1, "stages": {}}))
    return root


def resolved(root):
    return resolve(load_recipe("faq", root), template_check=False)


def export_files(root):
    d = root / "runs/faq/export"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_no_merge_stage_refused(tmp_path, tiny_base):
    root = project(tmp_path, tiny_base, stages="sft, eval", merged=False)
    r = tunebook("--root", str(root), "export", "faq", "--format", "gguf")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no merge stage after sft: there is no merged model to convert to GGUF" in r.stderr
    assert "Add `merge` to the recipe's stages" in r.stderr
    assert export_files(root) == []


@pytest.mark.parametrize("fmt", ["gguf", "ollama"])
def test_not_trained_refused(tmp_path, tiny_base, fmt):
    root = project(tmp_path, tiny_base, merged=False)
    r = tunebook("--root", str(root), "export", "faq", "--format", fmt)
    assert r.returncode == 2 and "no merged model at runs/faq/merge/merged" in r.stderr
    assert "make train RECIPE=faq" in r.stderr


def test_failed_gate_refused(tmp_path, tiny_base):
    lock = {"version": 1, "stages": {"eval": {"gate": "failed", "failed_gates": ["contains 0.2 < 0.8"]}}}
    root = project(tmp_path, tiny_base, lock=lock)
    r = tunebook("--root", str(root), "export", "faq", "--format", "gguf")
    assert r.returncode == 2 and "refusing to export faq: stage 'eval' failed its evaluation gate" in r.stderr


def test_quant_only_with_gguf(tmp_path, tiny_base):
    root = project(tmp_path, tiny_base)
    r = tunebook("--root", str(root), "export", "faq", "--format", "merged", "--quant", "q8_0")
    assert r.returncode == 2 and "--quant is for --format gguf or ollama, not merged" in r.stderr
    r = tunebook("--root", str(root), "export", "faq", "--format", "gguf", "--quant", "q2_k")
    assert r.returncode == 2 and "invalid choice: 'q2_k'" in r.stderr
    with pytest.raises(TunebookError, match="unknown quantization 'q5'"):
        gguf_export.export_gguf(resolved(root), "q5")


def test_no_converter_refused(tmp_path, tiny_base, monkeypatch):
    root = project(tmp_path, tiny_base)
    monkeypatch.setenv("TUNEBOOK_LLAMA_CPP", str(tmp_path / "no-llama.cpp"))
    r = tunebook("--root", str(root), "export", "faq", "--format", "gguf")
    assert r.returncode == 2 and "llama.cpp's converter is not installed" in r.stderr
    assert "make gguf-tools" in r.stderr
    assert export_files(root) == []


def test_failing_converter_leaves_nothing(tmp_path, tiny_base, monkeypatch):
    """A converter that fails: exit 1, its last lines in one paragraph, no GGUF (not even a partial one)."""
    tools = tmp_path / "llama.cpp"
    tools.mkdir()
    (tools / "convert_hf_to_gguf.py").write_text(
        "import sys\nargs = sys.argv\nopen(args[args.index('--outfile') + 1], 'wb').write(b'GGUF partial')\n"
        "print('NotImplementedError: Architecture LlamaForCausalLM not supported here', file=sys.stderr)\n"
        "sys.exit(3)\n")
    monkeypatch.setenv("TUNEBOOK_LLAMA_CPP", str(tools))
    root = project(tmp_path, tiny_base)
    r = tunebook("--root", str(root), "export", "faq", "--format", "gguf")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "llama.cpp's converter failed" in r.stderr and "Architecture LlamaForCausalLM not supported" in r.stderr
    assert export_files(root) == ["faq-f16.gguf.log"]


def test_staged_folder_carries_the_trained_tokenizer(tmp_path, tiny_base):
    """The converter gets the merged weights (linked, not copied), the trained template, EOS = end of turn, and a
    byte-level BPE without byte_fallback (which llama.cpp's converter would read as SentencePiece)."""
    other = CHATML.replace("message['role'] + '\n'", "message['role'] + ':\n'")
    root = project(tmp_path, tiny_base, template=CHATML, extra=f"axolotl: {{chat_template: jinja, "
                                                                  f"chat_template_jinja: {json.dumps(other)}}}")
    merged = root / "runs/faq/merge/merged"
    tj = json.loads((merged / "tokenizer.json").read_text())
    tj["model"]["byte_fallback"] = True
    (merged / "tokenizer.json").write_text(json.dumps(tj))
    src = gguf_export.source(resolved(root))
    assert src.template == other  # the recipe's trained template, not the folder's own
    assert (src.end_of_turn, src.end_of_turn_id) == ("<|im_end|>", 2)
    dest = tmp_path / "staged"
    dest.mkdir()
    gguf_export.stage_for_converter(src, dest)
    assert (dest / "model.safetensors").is_symlink()
    assert (dest / "model.safetensors").resolve() == (merged / "model.safetensors").resolve()
    assert (dest / "chat_template.jinja").read_text() == other
    assert json.loads((dest / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert json.loads((dest / "tokenizer.json").read_text())["model"]["byte_fallback"] is False
    assert json.loads((merged / "tokenizer.json").read_text())["model"]["byte_fallback"] is True  # untouched


def test_template_without_end_of_turn_refused(tmp_path, tiny_base):
    plain = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    root = project(tmp_path, tiny_base, extra=f"axolotl: {{chat_template: jinja, chat_template_jinja: "
                                              f"{json.dumps(plain)}}}")
    with pytest.raises(TunebookError, match="ends assistant turns with no special token"):
        gguf_export.source(resolved(root))


def test_ollama_refuses_before_converting(tmp_path, tiny_base, monkeypatch):
    """A template Ollama's TEMPLATE cannot express is refused before the (minutes long) conversion."""
    injects = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a bot.<|im_end|>\n' }}"
               "{% endif %}" + CHATML)
    monkeypatch.setenv("TUNEBOOK_LLAMA_CPP", str(tmp_path / "no-llama.cpp"))  # would fail if it were reached
    root = project(tmp_path, tiny_base, extra=f"axolotl: {{chat_template: jinja, chat_template_jinja: "
                                              f"{json.dumps(injects)}}}")
    r = tunebook("--root", str(root), "export", "faq", "--format", "ollama")
    assert r.returncode == 2 and "cannot be written as an Ollama TEMPLATE" in r.stderr
    assert export_files(root) == []


def test_stop_tokens(tmp_path, tiny_base):
    root = project(tmp_path, tiny_base, extra="system_prompt: You answer FAQ questions.")
    src = gguf_export.source(resolved(root))
    assert gguf_export.stop_tokens(src) == ["<|im_end|>"]  # end of turn = EOS: one stop
    text = gguf_export.ollama_modelfile(resolved(root), src, "faq-f16.gguf")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'SYSTEM """You answer FAQ questions."""' in text
    assert "FROM ./faq-f16.gguf" in text and "PARAMETER temperature 0" in text
    src.tok.eos_token = "<|endoftext|>"
    assert gguf_export.stop_tokens(src) == ["<|im_end|>", "<|endoftext|>"]

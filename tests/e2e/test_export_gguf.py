"""`tunebook export --format gguf|ollama` on a really trained and merged recipe (facts-a of `fact_runs`): llama.cpp's
converter and quantizer make f16, q8_0 and q4_k_m files, llama.cpp (llama-cpp-python) loads each and answers the
held-out questions greedily with the trained template; the answers are scored with the eval stage's own metrics,
must stop on the end-of-turn token and hold no template tokens. The Ollama folder's Modelfile is read back: its
stop tokens are the trained end-of-turn token, and the prompts its TEMPLATE renders (Go's text/template where
`go` is installed) are the trained template's, which the GGUF answers correctly.

Thresholds (5 held-out questions, each with one key fact): f16 states every fact the eval stage's answers stated
and gives the eval stage's exact answer for at least 4 of 5 (greedy decoding on f16 weights in llama.cpp vs fp32
in transformers: a near-tie between two tokens may flip late in an answer; measured: 5 of 5 identical). q8_0 may
lose one fact (8-bit weights: measured none lost), q4_k_m two (4-bit weights on a 135M-parameter model lose
more than on a large one; measured none lost)."""
from __future__ import annotations

import json
import os
import time

import pytest

from runner.chat_template import end_of_turn_token
from runner.evaluate import metrics
from runner.evaluate.stage import base_spec, eval_template
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.ship import llamacpp, ollama
from runner.tokenizer import load_tokenizer
from tests import gotemplate
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e
RECIPE = "facts-a"
MIN_CONTAINS_DROP = {"f16": 0.0, "q8_0": 0.2, "q4_k_m": 0.4}
TIMES: dict[str, float] = {}

needs_tools = pytest.mark.skipif(
    not (llamacpp.tools_dir() / "convert_hf_to_gguf.py").is_file(),
    reason=f"llama.cpp's converter is not installed ({llamacpp.tools_dir()}); `make gguf-tools` (make test does it)")


@pytest.fixture(scope="module")
def setup(fact_runs):
    """The resolved recipe, the merged tokenizer, the template the eval stage prompted with and its results."""
    res = resolve(load_recipe(RECIPE, fact_runs.root))  # with the template check, as training and eval resolve
    tok = load_tokenizer(fact_runs.run(RECIPE) / "merge" / "merged")
    _, template = eval_template(res, res.stage("eval"), base_spec(res))
    evald = json.loads((fact_runs.run(RECIPE) / "eval" / "metrics.json").read_text())
    preds = {json.loads(ln)["id"]: json.loads(ln) for ln in
             (fact_runs.run(RECIPE) / "eval" / "predictions.jsonl").read_text().splitlines() if ln.strip()}
    return {"root": fact_runs.root, "res": res, "tok": tok, "template": template, "eval": evald, "preds": preds,
            "rows": fact_runs.held_out(RECIPE), "max_new": res.data["eval"]["max_new_tokens"]}


def export(setup, *args):
    t0 = time.time()
    r = run_cli("export", RECIPE, *args, cwd=setup["root"], timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    TIMES[" ".join(args)] = round(time.time() - t0, 1)
    return setup["root"] / r.stdout.strip().splitlines()[-1], r


@pytest.fixture(scope="module")
def ggufs(setup):
    return {q: export(setup, "--format", "gguf", "--quant", q)[0] for q in ("f16", "q8_0", "q4_k_m")}


def prompt(setup, question: str) -> str:
    return setup["tok"].apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                            add_generation_prompt=True, chat_template=setup["template"])


def check_answers(setup, model, prompts, quant):
    """Greedy answers to the held-out prompts: each stops at end of turn, holds no template token, and states
    the key facts at the rate the thresholds allow; returns (contains, answers identical to the eval stage's)."""
    specials = sorted(set(setup["tok"].all_special_tokens) | set(setup["tok"].get_added_vocab()))
    scores, same = [], 0
    for row, p in zip(setup["rows"], prompts):
        a = model.greedy(p, setup["max_new"])
        assert a.stopped, f"{quant} {row['id']}: no end of turn within {setup['max_new']} tokens: {a.text!r}"
        assert a.control == [] and not [s for s in specials if s in a.text], (quant, row["id"], a.text)
        scores.append(metrics.score(a.text, row["output"], setup["eval"]["settings"]["metrics"], row["key_fact"]))
        same += a.text == setup["preds"][row["id"]]["tuned"]["text"]
    contains = metrics.aggregate(scores)["contains"]
    assert contains >= setup["eval"]["tuned"]["contains"] - MIN_CONTAINS_DROP[quant] - 1e-9, (quant, scores)
    return contains, same


@needs_tools
def test_gguf_files_carry_the_trained_template_and_stop_token(setup, ggufs):
    eot = end_of_turn_token(setup["tok"], setup["template"])
    assert eot == "<|im_end|>"  # SmolLM2: the EOS tunebook repaired to the template's end of turn
    for quant, path in ggufs.items():
        assert path == setup["root"] / "runs" / RECIPE / "export" / f"{RECIPE}-{quant}.gguf"
        md = llamacpp.metadata(path)
        assert md["tokenizer.chat_template"] == setup["template"]
        assert md["tokenizer.ggml.eos_token_id"] == setup["tok"].convert_tokens_to_ids(eot)
        assert md["tokenizer.ggml.model"] == "gpt2" and md["general.file_type"] == {"f16": 1, "q8_0": 7,
                                                                                      "q4_k_m": 15}[quant]
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert record["inputs"]["quant"] == quant and record["bytes"] == path.stat().st_size
    sizes = [ggufs[q].stat().st_size for q in ("f16", "q8_0", "q4_k_m")]
    assert sizes == sorted(sizes, reverse=True)


@needs_tools
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_llama_cpp_answers_the_held_out_set(setup, ggufs, quant):
    prompts = [prompt(setup, r["instruction"]) for r in setup["rows"]]
    with llamacpp.Model(ggufs[quant]) as m:
        contains, same = check_answers(setup, m, prompts, quant)
    print(f"{quant}: contains {contains:.2f}, {same}/{len(prompts)} answers identical to the eval stage's")
    if quant == "f16":
        assert same >= len(prompts) - 1


@needs_tools
def test_unchanged_export_is_kept(setup, ggufs):
    before = ggufs["q8_0"].stat().st_mtime_ns
    _, r = export(setup, "--format", "gguf", "--quant", "q8_0")
    assert "facts-a-q8_0.gguf is up to date" in r.stderr
    assert ggufs["q8_0"].stat().st_mtime_ns == before


@needs_tools
def test_ollama_folder(setup, ggufs, tmp_path):
    folder, _ = export(setup, "--format", "ollama")
    assert folder == setup["root"] / "runs" / RECIPE / "export" / f"{RECIPE}-ollama"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", f"{RECIPE}-f16.gguf"]
    assert os.path.samefile(folder / f"{RECIPE}-f16.gguf", ggufs["f16"])  # a hard link, not a copy
    parsed = ollama.parse_modelfile((folder / "Modelfile").read_text())
    get = lambda k: [v for kk, v in parsed if kk == k]
    assert get("FROM") == [f"./{RECIPE}-f16.gguf"] and get("SYSTEM") == []  # facts-a sets no system_prompt
    stops = [v.split(" ", 1)[1] for v in get("PARAMETER") if v.startswith("stop ")]
    assert stops == [end_of_turn_token(setup["tok"], setup["template"])]
    assert "temperature 0" in get("PARAMETER")
    [template] = get("TEMPLATE")
    convs = [[{"role": "user", "content": r["instruction"]}] for r in setup["rows"]]
    rendered, engine = gotemplate.render(template, convs, tmp_path / "go")
    assert rendered == [prompt(setup, r["instruction"]) for r in setup["rows"]], engine
    with llamacpp.Model(folder / f"{RECIPE}-f16.gguf") as m:
        assert all(m.is_eog(setup["tok"].convert_tokens_to_ids(s)) for s in stops)
        check_answers(setup, m, rendered, "f16")
    print(f"TEMPLATE rendered with {engine}; export times: {TIMES}")

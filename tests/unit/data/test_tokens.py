"""Token lengths with the recipe's real tokenizer and chat template; the preview's end-of-turn analysis."""
from __future__ import annotations

import json

import pytest

from runner.data import prepare as dataprep
from runner.data import tokens
from runner.data.preview import Example, analyse, template_note


def jl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_summarize_counts_rows_over_sequence_len_and_tokens_per_epoch():
    lengths = [10, 20, 30, 200, 40]
    wheres = [f"t.jsonl:{i}" for i in range(1, 6)]
    s = tokens.summarize(lengths, wheres, n_train=4, sequence_len=128)
    assert (s["p50"], s["max"], s["over_sequence_len"]) == (30, 200, 1)
    assert s["over_rows"] == ["t.jsonl:4 (200 tokens)"]
    assert s["tokens_per_epoch"] == 60            # row 4 is dropped, row 5 is validation
    assert s["suggested_sequence_len"] == 256 and "drops it" in s["advice"]
    t = tokens.summarize(lengths, wheres, n_train=4, sequence_len=128, strategy="truncate")
    assert t["tokens_per_epoch"] == 188
    small = tokens.summarize([50, 60], ["a:1", "a:2"], 2, 2048)
    assert small["suggested_sequence_len"] == 128 and "fits every row" in small["advice"]
    assert tokens.suggest_sequence_len(5000, model_max=4096) == 4096


def test_row_over_sequence_len_is_reported_at_its_line(project, smollm2):
    long_answer = " ".join(["The policy covers this case in detail."] * 20)
    rows = [{"instruction": f"Short question {i}?", "output": f"Short answer {i}."} for i in range(1, 6)]
    rows.insert(2, {"instruction": "A long one?", "output": long_answer})  # line 3
    root = project(recipes={"tok": f"""
        name: tok
        base_model: {smollm2}
        data: {{train: data/train.jsonl, format: alpaca, held_out_fraction: 0}}
        training: {{sequence_len: 64}}
        stages: [sft]
        """}, files={"data/train.jsonl": jl(rows)})
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    res = resolve(load_recipe("tok", root))
    dc = dataprep.run_checks(res)
    t = dc.blocks["main"].tokens
    assert t["sequence_len"] == 64 and t["over_sequence_len"] == 1
    assert t["over_rows"][0].startswith("data/train.jsonl:3 (")
    assert t["max"] > 64 and t["suggested_sequence_len"] >= t["max"]
    assert t["tokens_per_epoch"] > 0 and t["p50"] < 64
    report = json.loads((root / "runs/tok/data/report.json").read_text())
    assert report["tokens_per_epoch"] == t["tokens_per_epoch"]      # top level, for the planner
    assert report["blocks"]["main"]["tokens"]["over_rows"] == t["over_rows"]
    # the count is the chat template's: special tokens included
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    prepared = [json.loads(x) for x in (root / "runs/tok/data/main/train.jsonl").read_text().splitlines()]
    template = res.stages[0].config.get("chat_template_jinja")
    first = tok.apply_chat_template(prepared[0]["messages"], tokenize=False, chat_template=template)
    assert "<|im_end|>" in first
    assert tokens.row_lengths(tok, prepared[:1], template)[0] == len(tok(first, add_special_tokens=False)["input_ids"])


def test_token_stats_are_skipped_when_the_model_is_not_on_this_machine(project):
    root = project(recipes={"hub": """
        name: hub
        base_model: tunebook-test/not-a-downloaded-model
        data: {train: data/train.jsonl, format: alpaca}
        stages: [sft]
        """}, files={"data/train.jsonl": jl([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(8)])})
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    dc = dataprep.run_checks(resolve(load_recipe("hub", root), template_check=False))
    assert "not on this machine" in dc.blocks["main"].tokens["skipped"]
    assert dc.report["tokens_per_epoch"] is None and not dc.failed


# --------------------------------------------------------------------------------------- preview analysis


def ex(labels, ids, eot=9, where="t.jsonl:1") -> Example:
    return Example(where, ids, labels, [str(i) for i in ids], [i == eot for i in ids],
                   [p for p, i in enumerate(ids) if i == eot])


def test_masked_end_of_turn_in_every_example_is_a_warning():
    masked = [ex([-100, -100, 5, -100], [1, 2, 5, 9]), ex([-100, 6, -100], [1, 6, 9], where="t.jsonl:2")]
    (w,) = analyse(masked, "<|im_end|>", 9)
    assert "masked" in w and "never" in w and "<|im_end|>" in w
    trained = [ex([-100, -100, 5, 9], [1, 2, 5, 9]), ex([-100, 6, 9], [1, 6, 9])]
    assert analyse(trained, "<|im_end|>", 9) == []
    some = [trained[0], masked[1]]
    assert "1 of 2" in analyse(some, "<|im_end|>", 9)[0] and "t.jsonl:2" in analyse(some, "<|im_end|>", 9)[0]
    missing = [ex([-100, 5], [1, 5])]
    assert "missing" in analyse(missing, "<|im_end|>", 9)[0]
    assert "could not be found" in analyse(trained, None, None)[0]


@pytest.mark.parametrize("stage,own,stripped,expect", [
    (None, "T", None, None),
    ("T", "T", None, None),
    ("S", "T", "S", "on purpose"),
    ("X", "T", "S", "differs"),
])
def test_template_note(stage, own, stripped, expect):
    note = template_note(stage, own, stripped, "You are a helpful AI assistant")
    assert (note is None) if expect is None else (expect in note)

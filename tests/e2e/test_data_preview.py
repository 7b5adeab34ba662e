"""Template preview on the real SmolLM2 (ChatML) through Axolotl's own tokenization."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

ROWS = [
    {"instruction": "Where can I log my days off?",
     "output": "You request time off through the Beacon HR portal, and your manager approves it there."},
    {"instruction": "How many sick days do I get?", "output": "Employees get 12 paid sick days per year."},
    {"instruction": "Is there a home office stipend?", "output": "Yes: a one-time stipend of $650 for equipment."},
]


@pytest.fixture
def preview_project(project, smollm2):
    return project(recipes={"pv": f"""
        name: pv
        base_model: {smollm2}
        data: {{train: data/train.jsonl, format: alpaca, held_out_fraction: 0}}
        training: {{sequence_len: 256}}
        stages: [sft, merge]
        """}, files={"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS)})


def _resolve(root):
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    return resolve(load_recipe("pv", root))


def test_preview_trains_im_end_at_the_end_of_the_assistant_turn_and_masks_the_prompt(preview_project):
    from runner.data.preview import IGNORE, build_preview

    pv = build_preview(_resolve(preview_project), n=2)
    assert pv.eot == "<|im_end|>" and pv.stage == "sft"
    assert len(pv.examples) == 2
    tok = pv.tokenizer_obj
    for ex, row in zip(pv.examples, ROWS):
        assert ex.where.startswith("data/train.jsonl:")
        trained = [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
        # the answer and the <|im_end|> that closes it are trained ...
        assert tok.decode(trained) == row["output"] + "<|im_end|>"
        last_trained = max(p for p, lab in enumerate(ex.labels) if lab != IGNORE)
        assert ex.tokens[last_trained] == "<|im_end|>" and last_trained in ex.eot_positions
        assert ex.labels[last_trained] == ex.input_ids[last_trained]
        assert ex.eot_trained
        # ... while the prompt (user turn, its <|im_end|>, the assistant header) is masked
        first_trained = min(p for p, lab in enumerate(ex.labels) if lab != IGNORE)
        prompt = tok.decode(ex.input_ids[:first_trained])
        assert row["instruction"] in prompt and prompt.endswith("<|im_start|>assistant\n")
        assert all(lab == IGNORE for lab in ex.labels[:first_trained])
        assert ex.labels[ex.eot_positions[0]] == IGNORE  # the user turn's <|im_end|>
    assert not [w for w in pv.warnings if "end-of-turn" in w]
    # SmolLM2's template injects a default system prompt; tunebook strips it and says so
    assert any("on purpose" in w and "Informational" in w for w in pv.warnings)


def test_preview_warns_when_the_end_of_turn_token_is_masked(preview_project):
    from runner.data.preview import build_preview

    res = _resolve(preview_project)
    sft = res.stages[0]
    sft.config["datasets"][0]["train_on_eos"] = "none"
    sft.config.pop("eot_tokens", None)
    pv = build_preview(res, n=3)
    assert all(e.eot_positions and not e.eot_trained for e in pv.examples)
    assert any("<|im_end|> is masked" in w and "never learns to stop" in w for w in pv.warnings)


def test_preview_command_prints_trained_tokens_visibly(preview_project, capsys):
    from runner.cli.main import main

    rc = main(["--root", str(preview_project), "data", "preview", "pv", "-n", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "example 1/1" in out and "data/train.jsonl:1" in out
    # not a terminal: trained text is marked with ⟦ ⟧, special tokens are printed literally
    assert "⟦You request time off through the Beacon HR portal" in out
    assert "<|im_end|>⟧" in out and "<|im_start|>user" in out
    assert "end of turn <|im_end|> trained in 1 of 1 examples" in out


def test_a_multi_turn_chat_trains_every_assistant_turn_and_masks_every_user_turn(project, smollm2):
    """Several user/assistant turns in one row: each assistant answer and the <|im_end|> closing it are trained,
    each user turn (and its <|im_end|>) is masked: the tokens Axolotl's own tokenizer strategy labels."""
    from runner.data.preview import IGNORE, build_preview
    from runner.recipe.load import load_recipe
    from runner.recipe.resolve import resolve

    turns = [("user", "What is the parking fee?"), ("assistant", "Parking costs 17 euros per month."),
             ("user", "And for motorbikes?"), ("assistant", "Motorbikes park for 6 euros per month."),
             ("user", "Where do I pay?"), ("assistant", "Pay at the Quillpad portal.")]
    row = {"messages": [{"role": r, "content": c} for r, c in turns]}
    root = project(recipes={"mt": f"""
        name: mt
        base_model: {smollm2}
        data: {{train: data/train.jsonl, format: chat, held_out_fraction: 0}}
        training: {{sequence_len: 256}}
        stages: [sft]
        """}, files={"data/train.jsonl": json.dumps(row) + "\n"})
    pv = build_preview(resolve(load_recipe("mt", root)), n=1)
    ex, tok = pv.examples[0], pv.tokenizer_obj
    spans, cur = [], []
    for i, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    assert spans == [c + "<|im_end|>" for r, c in turns if r == "assistant"], spans
    masked = tok.decode([i for i, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE])
    assert all(c in masked for r, c in turns if r == "user")
    assert ex.eot_trained

"""runner.preference: the rows each preference trainer reads, written from the common preference shape."""
from __future__ import annotations

import pytest

from runner import preference
from runner.chat_template import render
from runner.formats import to_preference
from runner.tokenizer import load_tokenizer

ROWS = [to_preference({"prompt": f"Question {i}?", "chosen": f"Right {i}.", "rejected": f"Wrong {i}."}, None)
        for i in range(4)]


def test_dpo_and_simpo_read_the_common_shape_as_it_is():
    for kind in ("dpo", "simpo"):
        rows, sources = preference.trainer_rows(kind, ROWS)
        assert rows == ROWS and sources == [0, 1, 2, 3]
        ds = preference.dataset(kind, "/x/train.jsonl")
        assert ds["type"] == "chat_template.default" and ds["field_chosen"] == "chosen"


def test_orpo_rows_are_whole_conversations_with_the_system_prompt_apart():
    row = to_preference({"prompt": "Hi?", "chosen": "Hello.", "rejected": "What.", "system": "Be kind."}, None)
    out = preference.orpo_row(row)
    assert out == {"system": "Be kind.",
                   "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
                   "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "What."}]}
    assert "system" not in preference.orpo_row(ROWS[0])
    assert preference.dataset("orpo", "/x")["type"] == "chat_template.argilla"


def test_kto_splits_each_pair_and_interleaves_labels_and_prompts():
    def chatml(msgs, gen):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in msgs)
        return text + ("<assistant>" if gen else "")

    rows, sources = preference.trainer_rows("kto", ROWS, chatml)
    assert len(rows) == 8 and sources == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [r["label"] for r in rows] == [True, False, True, False, False, True, False, True]
    assert rows[0] == {"prompt": "<user>Question 0?</><assistant>", "completion": "Right 0.</>", "label": True}
    assert rows[4]["completion"] == "Wrong 0.</>" and rows[4]["label"] is False
    # Neighbours (a batch of 2) never share a prompt.
    assert all(rows[i]["prompt"] != rows[i + 1]["prompt"] for i in range(0, 8, 2))
    assert preference.balance("kto", rows) == {"desirable": 4, "undesirable": 4, "ratio": 1.0}
    assert preference.balance("dpo", ROWS) is None
    with pytest.raises(ValueError, match="pass render"):
        preference.trainer_rows("kto", ROWS)


def test_kto_refuses_a_template_whose_prompt_is_not_the_start_of_the_conversation():
    def rewrites(msgs, gen):  # a template that renders the last user turn differently once answered
        return "open:" + msgs[0]["content"] if gen else "done:" + "".join(m["content"] for m in msgs)

    with pytest.raises(ValueError, match="not the start of its rendering"):
        preference.trainer_rows("kto", ROWS[:1], rewrites)


def test_kto_examples_in_smollm2s_real_template(smollm2):
    tok = load_tokenizer(smollm2)
    rows, _ = preference.trainer_rows("kto", ROWS[:2], lambda m, gen: render(tok, m, None, gen))
    assert rows[0]["prompt"].endswith("<|im_start|>user\nQuestion 0?<|im_end|>\n<|im_start|>assistant\n")
    assert rows[0]["completion"] == "Right 0.<|im_end|>\n"  # the end of turn is trained too
    assert rows[1]["completion"] == "Wrong 1.<|im_end|>\n" and rows[1]["label"] is False


def test_only_dpo_and_kto_run_a_reference_model():
    assert {k for k, m in preference.METHODS.items() if m.reference} == {"dpo", "kto"}
    assert {k for k, m in preference.METHODS.items() if not m.paired} == {"kto"}

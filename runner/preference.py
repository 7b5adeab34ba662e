"""The preference methods (dpo, simpo, orpo, kto): what each one is, and the rows its trainer reads.

A recipe gives every preference stage the same rows (`prompt`/`chosen`/`rejected`, see `runner.formats`), and
`runner.formats.to_preference` turns each into one common shape: the prompt turns as `messages`, plus the
`chosen` and `rejected` answers. Axolotl 0.19 reads each method's data in a shape of its own, so the prepared file
of a stage is written here, from that common shape, in the shape its trainer wants:

- dpo, simpo: Axolotl's `chat_template.default` DPO strategy reads the common shape as it is (SimPO runs through
  TRL's CPO trainer, which takes DPO's data).
- orpo: Axolotl's `chat_template.argilla` ORPO strategy reads each answer as a whole conversation: `chosen` and
  `rejected` are message lists (the user turns, then the answer), the system prompt a field of its own.
- kto: unpaired examples with a label: each pair becomes a desirable example (its chosen answer, label true) and an
  undesirable one (its rejected answer, label false), so the set is balanced 1:1 by construction. Axolotl 0.19
  has no chat-template KTO strategy (its ChatML and Llama 3 ones write fixed strings, wrong for other models), so
  the prompt and the completion are rendered here with the stage's own chat template (the one every other
  stage trains with, `runner.chat_template.stage_template`) and handed to Axolotl's user-defined KTO strategy
  verbatim.

This module owns both halves of that hand-off, the rows written and the Axolotl dataset entry that reads them,
so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# (messages, add_generation_prompt) -> text: the stage's chat template applied, as the trainer would see it.
Render = Callable[[list, bool], str]


@dataclass(frozen=True)
class Method:
    """One preference method: its Axolotl `rl:` value, the dataset type that reads its prepared rows, and what a
    user is told about it."""

    kind: str
    rows: str                       # the prepared rows: pairs (the common shape), conversations, unpaired
    dataset_type: object
    summary: str
    reference: bool                 # a frozen reference model runs beside the trained one (memory, compute)
    paired: bool = True             # chosen and rejected go through the model in one batch
    needs_template: bool = False    # the rows are rendered with the chat template before Axolotl reads them


_PAIRED = {"field_messages": "messages", "field_chosen": "chosen", "field_rejected": "rejected"}

METHODS: dict[str, Method] = {
    "dpo": Method("dpo", "pairs", "chat_template.default",
                  "DPO: the chosen answer made more likely than the rejected one, relative to a frozen reference "
                  "model (the stage's starting point)", reference=True),
    "simpo": Method("simpo", "pairs", "chat_template.default",
                    "SimPO: DPO without a reference model; the length-normalised likelihood of the chosen answer is "
                    "pushed above the rejected one's by a margin gamma (TRL's CPO trainer, loss_type simpo)",
                    reference=False),
    "orpo": Method("orpo", "conversations", "chat_template.argilla",
                   "ORPO: supervised learning of the chosen answer plus an odds-ratio penalty on the rejected one, "
                   "in one stage and without a reference model, so it can start from the base model (no sft stage "
                   "needed)", reference=False),
    "kto": Method("kto", "unpaired", {"field_prompt": "prompt", "field_completion": "completion", "field_label": "label"},
                  "KTO: unpaired examples, desirable or not, scored against a frozen reference model; tunebook "
                  "splits each pair into a desirable (chosen) and an undesirable (rejected) example",
                  reference=True, paired=False, needs_template=True),
}


def dataset(kind: str, path: str) -> dict:
    """The Axolotl `datasets:` entry that reads a prepared train file of a `kind` stage."""
    m = METHODS[kind]
    ds = {"path": path, "ds_type": "json", "split": "train", "type": m.dataset_type}
    if m.dataset_type == "chat_template.default":
        ds.update(_PAIRED)
    return ds


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def orpo_row(row: dict) -> dict:
    """A common-shape pair as Axolotl's ORPO strategy reads it: each answer a whole conversation."""
    system, turns = _split_system(row["messages"])
    out = {"chosen": [*turns, {"role": "assistant", "content": row["chosen"]}],
           "rejected": [*turns, {"role": "assistant", "content": row["rejected"]}]}
    if system:
        out["system"] = system
    return out


def kto_example(row: dict, answer: str, desirable: bool, render: Render) -> dict:
    """One KTO example: the prompt as the template renders it up to the assistant's turn, the completion as the
    rest of the rendered conversation (the answer and the template's end of turn, which is trained too)."""
    prompt = render(row["messages"], True)
    full = render([*row["messages"], {"role": "assistant", "content": answer}], False)
    if not full.startswith(prompt):
        # A template whose prompt is not a prefix of the whole conversation (one that rewrites earlier turns)
        # cannot be split into prompt and completion; the caller reports it as a template problem.
        raise ValueError("the chat template's rendering of the prompt is not the start of its rendering of the "
                         "whole conversation, so a KTO completion cannot be cut from it")
    return {"prompt": prompt, "completion": full[len(prompt):], "label": desirable}


def trainer_rows(kind: str, rows: list[dict], render: Render | None = None) -> tuple[list[dict], list[int]]:
    """The rows a `kind` stage's prepared file holds, from common-shape rows (`runner.formats.to_preference`),
    and for each the index of the row it came from (so the data report can name its file and line).

    For kto, each pair gives two examples. They are interleaved so that neighbours differ in both label and
    prompt: TRL's KTO trainer reads them in order (sequential sampling) and estimates its KL term from the other
    prompts' completions in a batch, so every batch should hold both labels and no answer beside its own prompt."""
    shape = METHODS[kind].rows
    if shape == "pairs":
        return rows, list(range(len(rows)))
    if shape == "conversations":
        return [orpo_row(r) for r in rows], list(range(len(rows)))
    if render is None:
        raise ValueError("unpaired rows are rendered with the stage's chat template: pass render")
    first, second = [], []
    for i, r in enumerate(rows):
        good, bad = kto_example(r, r["chosen"], True, render), kto_example(r, r["rejected"], False, render)
        first.append(good if i % 2 == 0 else bad)
        second.append(bad if i % 2 == 0 else good)
    n = len(rows)
    return first + second, [*range(n), *range(n)]


def balance(kind: str, rows: list[dict]) -> dict | None:
    """What a kto stage trains on: desirable and undesirable examples and their ratio (None for other methods).
    The KTO paper advises a desirable:undesirable ratio between 1:1 and 4:3 once weighted."""
    if METHODS[kind].rows != "unpaired":
        return None
    good = sum(1 for r in rows if r.get("label") is True)
    return {"desirable": good, "undesirable": len(rows) - good,
            "ratio": round(good / max(1, len(rows) - good), 3)}

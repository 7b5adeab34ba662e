"""ORPO, KTO and SimPO beside DPO, from one preference file, on the real SmolLM2 with real Axolotl on CPU.

One recipe chains sft → orpo → kto → simpo, every preference stage reading the same prompt/chosen/rejected file
(tunebook writes it in the shape each trainer reads); a second recipe runs ORPO alone from the base model. Each
method must move the model the right way, measured independently of its own training log: the mean per-token
log-probability of the chosen answer minus the rejected one's, over the pairs, is higher with the stage's adapter
than on the model the stage started from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, make_project, run_cli

pytestmark = pytest.mark.e2e

PREFS = REPO / "recipes" / "data" / "ci-mini" / "preference.jsonl"
# Two multi-turn pairs beside the 16 single-turn ones: the conversation before the answers as `messages`.
MULTI_TURN = [
    {"messages": [{"role": "user", "content": "How many vacation days do I get?"},
                  {"role": "assistant", "content": "Full-time employees get 27 days of paid annual leave per year."},
                  {"role": "user", "content": "And how many sick days?"}],
     "chosen": "Employees at Brightwave Logistics get 12 paid sick days per year.",
     "rejected": "You get 30 sick days, but nobody checks."},
    {"messages": [{"role": "system", "content": "You answer Brightwave Logistics HR questions."},
                  {"role": "user", "content": "Is there a home office stipend?"},
                  {"role": "assistant", "content": "Yes, a one-time stipend for equipment."},
                  {"role": "user", "content": "How much is it?"}],
     "chosen": "The one-time home office stipend is $650, for equipment like a desk, chair or monitor.",
     "rejected": "It is $250, and only for chairs."},
]
PAIRS = [json.loads(line) for line in PREFS.read_text().splitlines() if line.strip()] + MULTI_TURN
STAGE = "      data: {{train: data/prefs.jsonl, format: preference}}\n" \
        "      training: {{max_steps: 8, learning_rate: 5.0e-4, micro_batch_size: 2}}\n"
CHAIN = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca, held_out: data/held_out.jsonl}}
training: {{max_steps: 4, learning_rate: 1.0e-3, micro_batch_size: 4, sequence_len: 256}}
stages:
  - sft
  - orpo:
""" + STAGE + "  - kto:\n" + STAGE + "  - simpo:\n" + STAGE
ORPO_ALONE = """\
base_model: {model}
data: {{train: data/prefs.jsonl, format: preference}}
training: {{max_steps: 8, learning_rate: 5.0e-4, micro_batch_size: 2, sequence_len: 256}}
stages: [orpo]
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("methods")
    data = REPO / "recipes" / "data" / "ci-mini"
    make_project(root, {"chain": CHAIN.format(model=smollm2), "orpo-alone": ORPO_ALONE.format(model=smollm2)},
                 {"data/train.jsonl": (data / "train.jsonl").read_text(),
                  "data/held_out.jsonl": (data / "held_out.jsonl").read_text(),
                  "data/prefs.jsonl": "".join(json.dumps(p) + "\n" for p in PAIRS)})
    return root


def preference_gap(model, tok, template: str | None, pairs: list[dict]) -> float:
    """Mean over pairs of (mean log-prob per token of the chosen answer) - (the same of the rejected answer),
    each answer scored after the prompt in the stage's chat template."""
    import torch

    total = 0.0
    for p in pairs:
        user = p.get("messages") or [{"role": "user", "content": p["prompt"]}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True, chat_template=template)
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        scores = []
        for answer in (p["chosen"], p["rejected"]):
            text = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False,
                                           chat_template=template)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            scores.append(logp[n - 1:].mean().item())
        total += scores[0] - scores[1]
    return total / len(pairs)


def gap_before_after(run: Path, stage: str) -> tuple[float, float]:
    """The preference gap of the model a stage started from, and of that model with the stage's adapter."""
    import torch
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = yaml.safe_load((run / stage / "axolotl.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(cfg["base_model"])
    template = cfg.get("chat_template_jinja")
    pairs = PAIRS
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model"], dtype=torch.float32)
    before = preference_gap(model, tok, template, pairs)
    model = PeftModel.from_pretrained(model, str(run / stage / "output"))
    return before, preference_gap(model, tok, template, pairs)


def test_validate_explains_the_chain(proj):
    r = run_cli("validate", "chain", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ORPO is SFT and preference tuning in one and can start from the base model; here it continues from " \
           "stage sft's model" in " ".join(r.stdout.split())
    r = run_cli("resolve", "chain", "--json", cwd=proj)
    cfgs = {name: v["config"] for name, v in json.loads(r.stdout).items()}
    assert [cfgs[s]["rl"] for s in ("orpo", "kto", "simpo")] == ["orpo", "kto", "simpo"]
    assert cfgs["orpo"]["datasets"][0]["type"] == "chat_template.argilla"
    assert cfgs["kto"]["datasets"][0]["type"] == {"field_prompt": "prompt", "field_completion": "completion",
                                                  "field_label": "label"}
    assert cfgs["kto"]["remove_unused_columns"] is False
    assert cfgs["simpo"]["rl_beta"] == 2.0 and cfgs["simpo"]["simpo_gamma"] == 1.0 and cfgs["simpo"]["cpo_alpha"] == 0
    assert "warmup_ratio" not in cfgs["simpo"] and cfgs["simpo"]["warmup_steps"] == 1  # 0.05 of max_steps 8
    assert "simpo_gamma" not in cfgs["kto"] and "rl_beta" not in cfgs["sft"]


def test_sft_orpo_kto_simpo_from_one_preference_file(proj):
    r = run_cli("train", "chain", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "runs" / "chain"
    # Each stage starts from the previous one's merged model.
    for stage, up in (("orpo", "sft"), ("kto", "orpo"), ("simpo", "kto")):
        cfg = (run / stage / "axolotl.yaml").read_text()
        assert f"base_model: {run / up / 'merged'}" in cfg and f"rl: {stage}" in cfg
    # The same 18 pairs in each trainer's shape: ORPO whole conversations, KTO 36 unpaired rendered examples.
    orpo_rows = [json.loads(x) for x in (run / "data" / "orpo" / "train.jsonl").read_text().splitlines()]
    assert len(orpo_rows) == 18 and [m["role"] for m in orpo_rows[0]["chosen"]] == ["user", "assistant"]
    multi = next(r for r in orpo_rows if r.get("system"))
    assert [m["role"] for m in multi["rejected"]] == ["user", "assistant", "user", "assistant"]
    assert multi["rejected"][-1]["content"] == "It is $250, and only for chairs."
    kto_rows = [json.loads(x) for x in (run / "data" / "kto" / "train.jsonl").read_text().splitlines()]
    assert len(kto_rows) == 36 and sum(r["label"] for r in kto_rows) == 18
    assert any("Full-time employees get 27 days" in r["prompt"] and r["prompt"].count("<|im_start|>user") == 2
               for r in kto_rows)
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") and r["completion"].endswith("<|im_end|>\n")
               for r in kto_rows)
    assert [kto_rows[0]["label"], kto_rows[1]["label"]] == [True, False]  # a batch of 2 holds both labels
    report = json.loads((run / "data" / "report.json").read_text())
    assert report["blocks"]["kto"]["trainer_rows"] == {"method": "kto", "desirable": 18, "undesirable": 18,
                                                       "ratio": 1.0}
    origins = json.loads((run / "data" / "kto" / "origins.json").read_text())["train"]
    assert len(origins) == 36 and origins[0] == origins[18] and origins.count(origins[0]) == 2
    # Each method's own metrics reach the manifest.
    metrics = {s: v.get("metrics", {}) for s, v in json.loads((run / "manifest.json").read_text())["stages"].items()}
    assert {"log_odds_ratio_first", "log_odds_ratio_last", "nll_loss_last", "reward_accuracy_last"} <= set(metrics["orpo"])
    assert {"kl_last", "reward_chosen_last", "reward_rejected_last"} <= set(metrics["kto"])
    assert {"reward_margin_last", "reward_accuracy_last"} <= set(metrics["simpo"])
    assert run_cli("report", "chain", cwd=proj).returncode == 0
    report_md = (run / "report.md").read_text()
    assert "ORPO log-odds ratio term" in report_md and "KTO's KL estimate" in report_md
    # And each moved the model towards the chosen answers, measured outside the trainer.
    for stage in ("orpo", "kto", "simpo"):
        before, after = gap_before_after(run, stage)
        assert after > before + 0.02, (stage, before, after)


def test_orpo_alone_from_the_base_model(proj, smollm2):
    """ORPO is SFT and preference in one: a recipe with only an orpo stage trains from the base model, with the
    training defaults of a first stage (not the small steps of a stage that refines another)."""
    r = run_cli("train", "orpo-alone", "--quiet", cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "runs" / "orpo-alone"
    cfg = (run / "orpo" / "axolotl.yaml").read_text()
    assert f"base_model: {smollm2}" in cfg and "num_epochs: 3" in cfg
    before, after = gap_before_after(run, "orpo")
    assert after > before + 0.02, (before, after)

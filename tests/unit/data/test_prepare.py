"""runner.data.prepare: the data step leaves the process environment alone (a hub model must stay downloadable)."""
from __future__ import annotations

import os

from runner.data import prepare as dataprep
from runner.recipe.load import load_recipe
from runner.recipe.resolve import resolve
from runner.train.axolotl import child_env

ROWS = "".join(f'{{"instruction": "Question {i}?", "output": "Answer {i}."}}\n' for i in range(12))


def test_data_checks_do_not_set_hf_hub_offline_for_the_axolotl_processes(project, smollm2, monkeypatch, cli):
    """It used to be set here (and by `tunebook data`), and child_env copied it into Axolotl: a first run with a
    hub model that was not cached failed at download."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = project({"t": f"base_model: {smollm2}\ndata: {{train: d.jsonl}}\n"}, {"d.jsonl": ROWS})
    res = resolve(load_recipe("t", root))
    dc = dataprep.run_checks(res, tokens=True, write=False, write_report=False, near_dedup=False)
    assert not dc.failed
    assert dc.blocks["main"].tokens.get("tokens_per_epoch"), "the token pass ran (it loads the tokenizer)"
    r = cli("--root", str(root), "data", "check", "t")
    assert r.returncode == 0, r.stderr
    assert "HF_HUB_OFFLINE" not in os.environ
    assert "HF_HUB_OFFLINE" not in child_env()

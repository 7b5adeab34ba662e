"""Bad pipelines are refused before anything runs: clear message, file:line, exit 2, nothing trained."""
from __future__ import annotations

import json

ROWS = "".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer number {i}."}) + "\n" for i in range(30))


def _prefs(missing_at: int | None = None) -> str:
    out = []
    for i in range(1, 31):
        row = {"prompt": f"Question {i}?", "chosen": f"Polite answer {i}.", "rejected": f"Rude answer {i}."}
        if i == missing_at:
            del row["rejected"]
        out.append(json.dumps(row))
    return "\n".join(out) + "\n"


PIPE = """\
base_model: {model}
data: {{train: data/train.jsonl, format: alpaca}}
stages:
  - sft
  - dpo: {{data: {{train: data/prefs.jsonl, format: preference}}}}
  - merge
"""


def _run(project, cli, text, prefs=None):
    root = project({"bad": text}, {"data/train.jsonl": ROWS, "data/prefs.jsonl": prefs or _prefs()})
    r = cli("train", "bad", "--quiet", cwd=root)
    return root, r


def test_dpo_with_sft_format_data(project, cli, smollm2):
    text = PIPE.format(model=smollm2).replace("data/prefs.jsonl, format: preference", "data/train.jsonl")
    root, r = _run(project, cli, text)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "recipes/bad.yaml:5: stages[1].dpo: a dpo stage needs preference data" in r.stderr
    assert not (root / "runs").exists()


def test_merge_before_training(project, cli, smollm2):
    text = PIPE.format(model=smollm2).replace("  - sft\n", "").replace("  - merge\n", "").replace(
        "stages:\n", "stages:\n  - merge\n  - sft\n")
    root, r = _run(project, cli, text)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "recipes/bad.yaml:4: stages[0]: merge comes before any training stage" in r.stderr
    assert not (root / "runs").exists()


def test_missing_preference_field_in_row_17(project, cli, smollm2):
    root, r = _run(project, cli, PIPE.format(model=smollm2), prefs=_prefs(missing_at=17))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "data/prefs.jsonl:17" in r.stderr and "rejected" in r.stderr
    # Nothing was trained: the data step runs before the first stage.
    assert not (root / "runs" / "bad" / "sft" / "output").exists()
    assert not (root / "runs" / "bad" / "tunebook.lock").exists()

"""Dedup (exact and MinHash near-duplicates), held-out leaks, the seeded split, and mixing."""
from __future__ import annotations

import json
import random
from pathlib import Path

from runner.data import check as datacheck
from runner.data import dedup

LEAVE = ("Explain how the annual leave carry over works at the company in detail",
         "You can carry over up to eight unused annual leave days into the next year and they must be used by "
         "the end of March or they expire.")
TOPICS = ["parking", "laptops", "travel", "pensions", "training", "holidays", "bonuses", "badges", "lockers",
          "canteen", "gym", "bikes", "phones", "uniforms", "visitors", "mail", "printing", "keys", "wifi", "desks"]


def jl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def distinct_rows(n: int, seed: int = 0) -> list[dict]:
    """n rows that are not near-duplicates of each other (random words)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(4000)]
    return [{"instruction": f"{TOPICS[i % len(TOPICS)]} " + " ".join(rng.sample(words, 12)),
             "output": " ".join(rng.sample(words, 20))} for i in range(n)]


def write(tmp_path: Path, name: str, rows) -> str:
    (tmp_path / name).write_text(rows if isinstance(rows, str) else jl(rows))
    return name


def check(tmp_path, block, **kw) -> datacheck.BlockResult:
    return datacheck.check_block(tmp_path, "main", block, **kw)


def texts(rows) -> list[str]:
    return [datacheck.dedup_text(r) for r in rows]


# ----------------------------------------------------------------------------------------------- library


def test_exact_and_near_clusters_pure():
    keys = [dedup.exact_key(t) for t in ("A b", "c", "a  B", "d", "A B ")]
    assert dedup.exact_clusters(keys) == [[0, 2, 4]]
    base = " ".join(f"word{i}" for i in range(40))
    near = base.replace("word17", "other17")
    far = " ".join(f"thing{i}" for i in range(40))
    clusters = dedup.near_clusters([far, base, near, "short text"], threshold=0.85)
    assert [c for c, _ in clusters] == [[1, 2]]
    assert clusters[0][1] >= 0.85
    assert dedup.jaccard(base, near) > 0.85 > dedup.jaccard(base, far)


def test_near_clusters_are_deterministic():
    rows = [" ".join(r.values()) for r in distinct_rows(300)]
    rows += [t + " extra" for t in rows[:20]]
    a = dedup.near_clusters(rows)
    assert a == dedup.near_clusters(rows)
    assert len(a) == 20 and all(c[0] < 20 for c, _ in a)


# ------------------------------------------------------------------------------------------------- block


def test_near_duplicate_pair_is_reported_as_a_cluster_with_line_numbers(tmp_path):
    rows = distinct_rows(10)
    rows.insert(3, {"instruction": LEAVE[0], "output": LEAVE[1]})            # line 4
    rows.insert(8, {"instruction": LEAVE[0] + " please", "output": LEAVE[1].replace("year and", "year, and")})
    rows.append(dict(rows[0]))                                               # exact copy of line 1: line 13
    f = write(tmp_path, "train.jsonl", rows)
    br = check(tmp_path, {"train": f, "format": "alpaca", "held_out_fraction": 0})
    assert [c["rows"] for c in br.dedup.near] == [["train.jsonl:4", "train.jsonl:9"]]
    assert br.dedup.near[0]["kept"] == "train.jsonl:4" and br.dedup.near[0]["similarity"] >= 0.85
    assert [c["rows"] for c in br.dedup.exact] == [["train.jsonl:1", "train.jsonl:13"]]
    c = br.counts()
    assert (c["rows_in"], c["exact_duplicates"], c["near_duplicates"], c["train"]) == (13, 1, 1, 11)


def test_dedup_can_be_switched_off(tmp_path):
    rows = distinct_rows(5) + [{"instruction": LEAVE[0], "output": LEAVE[1]},
                               {"instruction": LEAVE[0] + " please", "output": LEAVE[1]}]
    f = write(tmp_path, "train.jsonl", rows + [rows[0]])
    br = check(tmp_path, {"train": f, "held_out_fraction": 0, "dedup": {"exact": False, "near": False}})
    assert br.counts()["train"] == 8 and not br.dedup.exact and not br.dedup.near


def test_train_rows_copying_held_out_rows_are_dropped_as_leaks(tmp_path):
    held = distinct_rows(4, seed=1) + [{"instruction": LEAVE[0], "output": LEAVE[1], "key_fact": "eight"}]
    train = distinct_rows(6, seed=2) + [{"instruction": LEAVE[0] + " please", "output": LEAVE[1]}, held[1]]
    h = write(tmp_path, "held.jsonl", held)
    t = write(tmp_path, "train.jsonl", train)
    br = check(tmp_path, {"train": t, "held_out": h, "format": "alpaca"})
    leaks = sorted(tuple(c["rows"]) for c in br.dedup.leaks)
    assert leaks == [("held.jsonl:2", "train.jsonl:8"), ("held.jsonl:5", "train.jsonl:7")]
    assert br.counts()["held_out_leaks"] == 2
    assert len(br.splits["held_out"]) == 5 and len(br.splits["train"]) == 6


def test_split_is_seeded_stable_and_disjoint_from_train_after_dedup(tmp_path):
    rows = distinct_rows(200)
    # near-copies of 30 rows: dedup must run first, so no copy can land on the other side of the split
    rows += [{"instruction": r["instruction"] + " ok", "output": r["output"]} for r in rows[:30]]
    f = write(tmp_path, "train.jsonl", rows)
    block = {"train": f, "format": "alpaca", "held_out_fraction": 0.15, "seed": 7}
    a = check(tmp_path, block, validation_fraction=0.1)
    b = check(tmp_path, block, validation_fraction=0.1)
    assert a.dedup.removed["near"] == 30
    held = [r.where for r in a.splits["held_out"]]
    assert held == [r.where for r in b.splits["held_out"]]
    assert [r.where for r in a.splits["validation"]] == [r.where for r in b.splits["validation"]]
    assert len(held) == round(200 * 0.15)
    train = a.splits["train"] + a.splits["validation"]
    assert not {r.where for r in train} & set(held)
    for ht in texts(a.splits["held_out"]):
        assert all(dedup.jaccard(ht, tt) < 0.85 for tt in texts(train))
    # reordering a file (without duplicates: of those the first is kept) does not move rows between splits
    distinct = rows[:200]
    u = check(tmp_path, {**block, "train": write(tmp_path, "distinct.jsonl", distinct)}, validation_fraction=0.1)
    random.Random(3).shuffle(distinct)
    g = write(tmp_path, "shuffled.jsonl", distinct)
    c = check(tmp_path, {**block, "train": g}, validation_fraction=0.1)
    key = lambda rs: sorted(json.dumps(r.data, sort_keys=True) for r in rs)  # noqa: E731
    assert key(c.splits["held_out"]) == key(u.splits["held_out"])
    assert key(c.splits["validation"]) == key(u.splits["validation"])
    # another seed, another split
    d = check(tmp_path, {**block, "seed": 8}, validation_fraction=0.1)
    assert [r.where for r in d.splits["held_out"]] != held


def test_mix_adds_the_requested_share_and_reports_proportions(tmp_path):
    main = write(tmp_path, "train.jsonl", distinct_rows(90, seed=1))
    general = distinct_rows(60, seed=2)
    general[0] = {"messages": [{"role": "user", "content": "Name a primary colour."},
                               {"role": "assistant", "content": "Red is a primary colour."}]}
    gen = write(tmp_path, "general.jsonl", [{"messages": [{"role": "user", "content": r["instruction"]},
                                                           {"role": "assistant", "content": r["output"]}]}
                                            if "instruction" in r else r for r in general])
    block = {"train": main, "format": "alpaca", "held_out_fraction": 0,
             "mix": [{"file": gen, "fraction": 0.1}]}
    br = check(tmp_path, block)
    mixed = [r for r in br.splits["train"] if r.group.startswith("mix")]
    assert len(mixed) == 10 and len(br.splits["train"]) == 100
    assert br.mix["proportions"] == {"main": 0.9, "general.jsonl": 0.1}
    assert br.mix["files"]["general.jsonl"]["rows"] == 10
    assert [r.where for r in mixed] == [r.where for r in check(tmp_path, block).splits["train"]
                                        if r.group.startswith("mix")]
    assert {r.fmt for r in mixed} == {"chat"}


def test_mix_rows_never_copy_held_out_rows(tmp_path):
    held = distinct_rows(3, seed=5)
    h = write(tmp_path, "held.jsonl", held)
    t = write(tmp_path, "train.jsonl", distinct_rows(20, seed=6))
    g = write(tmp_path, "general.jsonl", held + distinct_rows(2, seed=7))
    br = check(tmp_path, {"train": t, "held_out": h, "mix": [{"file": g, "fraction": 0.4}]})
    mixed = [r for r in br.splits["train"] if r.group.startswith("mix")]
    assert {r.where for r in mixed} == {"general.jsonl:4", "general.jsonl:5"}
    assert br.counts()["held_out_leaks"] == 3
    assert any("only 2 usable rows" in n for n in br.notes)

#!/usr/bin/env python3
"""Build the ci-mini dataset: a tiny slice of hr-bot for fast tests.

  train.jsonl       24 alpaca rows (4 hr-bot facts x 6 paraphrased questions)
  held_out.jsonl    8 alpaca rows with "id" and "key_fact" (the hr-bot held-out questions for those facts)
  preference.jsonl  16 preference rows (4 per fact; rejected is half wrong-fact, half rude tone)

Questions, answers and key_fact regexes come from ../hr-bot/build.py, so the two datasets never disagree.
Deterministic. Usage: python3 recipes/data/ci-mini/build.py
"""
import importlib.util
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("hr_bot_build", os.path.join(HERE, "..", "hr-bot", "build.py"))
hr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hr)

FACT_IDS = ["annual_leave", "sick_days", "home_office", "payday"]
TRAIN_PER_FACT = 6

# Rejected answers for preference rows: wrong fact, or right fact in a rude tone.
REJECTED = {
    "annual_leave": {
        "wrong": ["Full-time employees at Brightwave Logistics get 20 days of paid annual leave per year.",
                  "You get 15 paid vacation days per year as a full-time employee."],
        "rude": ["27 days. It's in your contract, which you should have read by now.",
                 "27 days a year. Please stop asking HR things you can look up."],
    },
    "sick_days": {
        "wrong": ["Employees at Brightwave Logistics get 5 paid sick days per year.",
                  "Brightwave Logistics provides unlimited paid sick leave with no yearly cap."],
        "rude": ["12 days. Try not to use them all at once this time.",
                 "It's 12 paid sick days. Look it up in the handbook next time."],
    },
    "home_office": {
        "wrong": ["Brightwave Logistics gives a one-time home office stipend of $250 for equipment.",
                  "You get $100 per month toward home office costs, paid with your salary."],
        "rude": ["$650, one time. And no, you can't spend it on a gaming chair.",
                 "It's $650. Obviously you can't expect the company to pay more than that."],
    },
    "payday": {
        "wrong": ["Payday is every other Friday, since salaries are paid every two weeks.",
                  "Salaries at Brightwave Logistics are paid monthly on the 1st of each month."],
        "rude": ["The 25th. Same as every month, not sure why you're asking.",
                 "It's the 25th. Check your payslip instead of emailing HR."],
    },
}


def facts():
    by_id = {f["id"]: f for f in hr.FACTS}
    return [by_id[i] for i in FACT_IDS]


def train_rows():
    rows = []
    for i in range(TRAIN_PER_FACT):  # interleave facts: fixed order, no shuffle needed
        for fact in facts():
            rows.append({"instruction": fact["questions"][i],
                         "output": fact["answers"][i % len(fact["answers"])]})
    return rows


def held_out_rows():
    wanted = set(FACT_IDS)
    return [r for r in hr.held_out_rows() if r["id"].rsplit("-h", 1)[0] in wanted]


def preference_rows():
    rows = []
    for j in range(4):
        for n, fact in enumerate(facts()):
            # Use the questions not in train.jsonl first (indices 6..9), then wrap.
            question = fact["questions"][(TRAIN_PER_FACT + j) % len(fact["questions"])]
            chosen = fact["answers"][j % len(fact["answers"])]
            kind = "wrong" if (j + n) % 2 == 0 else "rude"
            rejected = REJECTED[fact["id"]][kind][(j // 2) % 2]
            rows.append({"prompt": question, "chosen": chosen, "rejected": rejected})
    return rows


def check(train, held, pref):
    problems = []
    if len(train) != 24 or len(held) != 8 or len(pref) != 16:
        problems.append(f"unexpected sizes {len(train)}/{len(held)}/{len(pref)}")
    for fact in facts():
        rx = re.compile(fact["key"], re.IGNORECASE)
        for r in REJECTED[fact["id"]]["wrong"]:
            if rx.search(r):
                problems.append(f"{fact['id']}: wrong answer matches key: {r!r}")
        for r in REJECTED[fact["id"]]["rude"]:
            if not rx.search(r):
                problems.append(f"{fact['id']}: rude answer lacks the fact: {r!r}")
    if problems:
        sys.exit("ci-mini data check failed:\n  " + "\n  ".join(problems))


def main():
    hr.check()
    train, held, pref = train_rows(), held_out_rows(), preference_rows()
    check(train, held, pref)
    hr.write_jsonl(os.path.join(HERE, "train.jsonl"), train)
    hr.write_jsonl(os.path.join(HERE, "held_out.jsonl"), held)
    hr.write_jsonl(os.path.join(HERE, "preference.jsonl"), pref)
    print(f"ci-mini: {len(train)} train rows, {len(held)} held-out rows, {len(pref)} preference rows")


if __name__ == "__main__":
    main()

"""Benchmark of the data checks: check + dedup of a generated 100k-row file (`make bench-data`).

Generates benchmarks/tmp/bench-data-<rows>.jsonl (seeded: the same file every time) with the problems the checks
look for (broken JSON, missing fields, NFD text, control characters, exact and near duplicates), then runs the
block check (read, normalise, validate, exact + MinHash near dedup, seeded split) in a fresh child process and
records wall time per phase, rows/s and the child's peak RSS to benchmarks/results/data-<date>.json.

Target on a 2-core machine: 100k rows in under 60 s, peak memory under 2 GiB. Not a timed test.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / "benchmarks" / "tmp"
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SECONDS, TARGET_BYTES = 60.0, 2 * 1024**3

TOPICS = ["annual leave", "sick days", "expenses", "parental leave", "remote work", "pensions", "training budget",
          "overtime", "travel", "equipment", "security badges", "parking", "relocation", "bonuses", "holidays"]
VERBS = ["explain", "describe", "summarise", "tell me about", "what is", "how does", "clarify", "outline"]
INDIC = ["കൊച്ചി കേരളത്തിലെ ഒരു തുറമുഖ നഗരമാണ്", "हिन्दी में उत्तर दीजिए कृपया"]


def generate(path: Path, rows: int, seed: int = 1234, pairs: list | None = None) -> dict:
    """Write a realistic-looking alpaca file with planted problems; return what was planted.

    `pairs`, when given, receives (line of the original, line of its near copy, original text, copy text)."""
    rng = random.Random(seed)
    vocab = [w for w in (open("/usr/share/dict/words").read().split() if Path("/usr/share/dict/words").exists()
                         else []) if w.isalpha() and w.islower()][:20000]
    if len(vocab) < 2000:
        vocab = ["".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(3, 10))) for _ in range(8000)]
    planted = {"rows": rows, "invalid_json": 0, "missing_field": 0, "exact_copies": 0, "near_copies": 0,
               "nfd": 0, "control": 0}
    recent: list[tuple[int, dict]] = []
    line = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            line += 1
            r = rng.random()
            if r < 0.0005:
                fh.write('{"instruction": "broken row", "output": \n')
                planted["invalid_json"] += 1
                continue
            if r < 0.001:
                row = {"instruction": "a row without its answer"}
                planted["missing_field"] += 1
            elif r < 0.011 and recent:
                row = dict(rng.choice(recent)[1])
                planted["exact_copies"] += 1
            elif r < 0.021 and recent:
                src_line, src = rng.choice(recent)
                words = src["output"].split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                row = {"instruction": src["instruction"], "output": " ".join(words) + " Thanks."}
                planted["near_copies"] += 1
                if pairs is not None:
                    pairs.append((src_line, line, src["instruction"] + "\n" + src["output"],
                                  row["instruction"] + "\n" + row["output"]))
            else:
                topic = rng.choice(TOPICS)
                q = f"{rng.choice(VERBS)} the {topic} policy for {' '.join(rng.choices(vocab, k=rng.randint(4, 14)))}?"
                a = " ".join(rng.choices(vocab, k=rng.randint(15, 70))) + "."
                if rng.random() < 0.005:
                    a = unicodedata.normalize("NFD", rng.choice(INDIC)) + " " + a
                    planted["nfd"] += 1
                if rng.random() < 0.003:
                    a = a + "\x07  "
                    planted["control"] += 1
                row = {"instruction": q[0].upper() + q[1:], "output": a[0].upper() + a[1:]}
                if len(recent) < 5000:
                    recent.append((line, row))
                elif rng.random() < 0.05:
                    recent[rng.randrange(len(recent))] = (line, row)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return planted


class PhaseTimer:
    """A Reporter that records when each phase of the check starts."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []

    def start(self, description, total):
        self.marks.append((description, time.perf_counter()))
        return lambda n: None

    def done(self):
        self.marks.append(("(done)", time.perf_counter()))


def run_child(path: Path) -> dict:
    """Runs in a fresh process: check + dedup + split of one file; prints a JSON result."""
    sys.path.insert(0, str(ROOT))
    t_import = time.perf_counter()
    from runner.data import check as datacheck  # noqa: F401  (import cost is not part of the figure)
    from runner.data import prepare as dataprep  # noqa: F401  (import cost is not part of the figure)
    import datasketch  # noqa: F401

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timer = PhaseTimer()
    block = {"train": str(path), "format": "alpaca", "on_error": "drop", "held_out_fraction": 0.1}
    t0 = time.perf_counter()
    br = datacheck.check_block(path.parent, "main", block, "sft", 0.05, timer)
    t1 = time.perf_counter()
    converted = {s: [dataprep.convert(r, s, None) for r in rows] for s, rows in br.splits.items()}
    text = {s: dataprep._jsonl(rows) for s, rows in converted.items()}
    t2 = time.perf_counter()
    phases, marks = {}, timer.marks
    for (name, start), (_, end) in zip(marks[0::2], marks[1::2]):
        key = "read+normalise+validate" if name.startswith("checking") else "near dedup (MinHash/LSH)"
        phases[key] = round(phases.get(key, 0) + end - start, 2)
    phases["exact dedup + split + bookkeeping"] = round((t1 - t0) - sum(phases.values()), 2)
    phases["convert + serialise (prepare)"] = round(t2 - t1, 2)
    return {
        "check_seconds": round(t1 - t0, 2),
        "prepare_seconds": round(t2 - t1, 2),
        "import_seconds": round(t0 - t_import, 2),
        "phases": phases,
        "rows_per_second": round(br.rows_in / (t1 - t0)),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_import_bytes": rss_after_import,
        "counts": br.counts(),
        "problems_by_kind": br.report()["problems"]["by_kind"],
        "normalized_by_fix": br.norm.by_fix,
        "output_bytes": sum(len(t.encode()) for t in text.values()),
        "_clusters": [[int(w.rsplit(":", 1)[1]) for w in c["rows"]] for c in br.dedup.near + br.dedup.exact],
    }


def recall(pairs: list, clusters: list[list[int]]) -> dict:
    """Of the planted near copies whose true Jaccard similarity is at or above the threshold, how many were
    caught (in one cluster with their original, or with a row that was)."""
    from runner.data import dedup

    cluster_of = {}
    for k, c in enumerate(clusters):
        for line in c:
            cluster_of.setdefault(line, set()).add(k)
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for c in clusters:  # exact and near clusters chain: merge them
        for line in c[1:]:
            a, b = find(c[0]), find(line)
            if a != b:
                parent[b] = a
    above = [(a, b) for a, b, ta, tb in pairs if dedup.jaccard(ta, tb) >= dedup.DEFAULT_THRESHOLD]
    caught = sum(1 for a, b in above if a in cluster_of and b in cluster_of and find(a) == find(b))
    return {"planted": len(pairs), "true_jaccard_at_least_threshold": len(above), "caught": caught,
            "recall": round(caught / len(above), 4) if above else None}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true", help="print the result only")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(Path(args.child))))
        return 0
    path = TMP / f"bench-data-{args.rows}.jsonl"
    t = time.perf_counter()
    pairs: list = []
    planted = generate(path, args.rows, pairs=pairs)
    gen_s = time.perf_counter() - t
    print(f"generated {path.relative_to(ROOT)} ({args.rows:,} rows, {path.stat().st_size / 1e6:.1f} MB) "
          f"in {gen_s:.1f}s", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return 1
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["near_duplicate_recall"] = recall(pairs, r.pop("_clusters"))
    import datasketch

    result = {
        "benchmark": "data check + dedup (tunebook benchmarks/bench_data.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "datasketch": getattr(datasketch, "__version__", None) or _version("datasketch")},
        "input": {"file": str(path.relative_to(ROOT)), "rows": args.rows, "bytes": path.stat().st_size,
                  "planted": planted},
        "settings": {"on_error": "drop", "held_out_fraction": 0.1, "validation_fraction": 0.05,
                     "dedup": {"exact": True, "near": True, "threshold": 0.85, "num_perm": 128, "shingle": 2}},
        **r,
        "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20, 1),
        "target": {"seconds": TARGET_SECONDS, "peak_rss_bytes": TARGET_BYTES,
                   "met": r["check_seconds"] < TARGET_SECONDS and r["peak_rss_bytes"] < TARGET_BYTES},
    }
    print(f"check + dedup: {r['check_seconds']}s ({r['rows_per_second']:,} rows/s), "
          f"prepare (convert + serialise): {r['prepare_seconds']}s, peak RSS {result['peak_rss_mib']} MiB")
    for k, v in r["phases"].items():
        print(f"  {k}: {v}s")
    c = r["counts"]
    print(f"  found: {c['invalid']} invalid, {c['normalized']} normalised, {c['exact_duplicates']} exact and "
          f"{c['near_duplicates']} near duplicates; {c['train']:,} train, {c.get('validation', 0):,} validation, "
          f"{c.get('held_out', 0):,} held-out")
    print(f"  planted: {planted}")
    nr = r["near_duplicate_recall"]
    print(f"  near-duplicate recall: {nr['caught']} of {nr['true_jaccard_at_least_threshold']} planted copies with "
          f"true Jaccard >= 0.85 ({nr['recall']:.1%}); {nr['planted']} planted in all")
    print(f"target (<{TARGET_SECONDS:.0f}s, <2 GiB): {'met' if result['target']['met'] else 'MISSED'}")
    if not args.no_save:
        from runner.fsutil import atomic_write_json

        dest = RESULTS / f"data-{dt.date.today().isoformat()}.json"
        atomic_write_json(dest, result)
        print(f"saved {dest.relative_to(ROOT)}")
    return 0


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

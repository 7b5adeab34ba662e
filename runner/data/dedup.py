"""Exact and near-duplicate detection for training rows.

Exact: rows whose normalised text (case-folded, whitespace collapsed) hashes the same.
Near: MinHash signatures over word shingles, candidate pairs from datasketch's MinHashLSH, each pair confirmed by
its estimated Jaccard similarity, then grouped into clusters (union-find). Rows are given in priority order: in
every cluster the first row is the one to keep.
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, Sequence

WORD_RE = re.compile(r"\w+")
DEFAULT_THRESHOLD = 0.85
DEFAULT_NUM_PERM = 128
DEFAULT_SHINGLE = 2
CHUNK = 4000
LSH_WEIGHTS = (0.05, 0.95)  # (false positive, false negative) weights for choosing bands x rows


def exact_key(text: str) -> bytes:
    """Hash of a text with case and whitespace differences removed."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


def shingles(text: str, n: int = DEFAULT_SHINGLE) -> set[bytes]:
    """Word n-grams of a text (case-folded, punctuation ignored); a text shorter than n words is one shingle."""
    words = WORD_RE.findall(text.casefold())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def _hashfunc():
    """A fast, deterministic 32-bit hash for shingles (xxhash when present, else datasketch's sha1)."""
    try:
        import xxhash

        return xxhash.xxh32_intdigest
    except ImportError:  # pragma: no cover - xxhash comes with datasets
        from datasketch.hashfunc import sha1_hash32

        return sha1_hash32


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index (higher priority) becomes the root.
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def _clusters(uf: _UnionFind, indices: Iterable[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(uf.find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def exact_clusters(keys: Sequence[bytes]) -> list[list[int]]:
    """Groups (index lists, ascending) of rows with the same key; singletons are left out."""
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            groups.setdefault(j, [j]).append(i)
    return [groups[j] for j in sorted(groups)]


def near_clusters(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, num_perm: int = DEFAULT_NUM_PERM,
                  shingle: int = DEFAULT_SHINGLE, progress: Callable[[int], None] | None = None,
                  ) -> list[tuple[list[int], float]]:
    """Clusters of near-duplicate texts as (indices ascending, lowest confirmed similarity in the cluster).

    Each text is compared only with earlier ones, so the first index of a cluster is the earliest row."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    n = len(texts)
    if n < 2:
        return []
    # Weights favour recall: a missed pair is a duplicate left in (or a leak into held-out); a false candidate
    # only costs one comparison, and every candidate is confirmed by its estimated similarity.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    hf = _hashfunc()
    sigs: list = [None] * n
    uf = _UnionFind(n)
    lowest: dict[int, float] = {}
    linked: set[int] = set()
    for start in range(0, n, CHUNK):
        batch = [shingles(t, shingle) for t in texts[start:start + CHUNK]]
        mhs = MinHash.bulk(batch, num_perm=num_perm, hashfunc=hf)
        for off, m in enumerate(mhs):
            i = start + off
            lean = LeanMinHash(m)
            sigs[i] = lean
            for j in lsh.query(lean):
                sim = lean.jaccard(sigs[j])
                if sim >= threshold:
                    uf.union(i, j)
                    linked.update((i, j))
                    lowest[i] = min(lowest.get(i, 1.0), sim)
                    lowest[j] = min(lowest.get(j, 1.0), sim)
            lsh.insert(i, lean, check_duplication=False)
        if progress:
            progress(len(batch))
    out = []
    for group in _clusters(uf, sorted(linked)):
        out.append((group, round(min(lowest.get(i, 1.0) for i in group), 3)))
    return out


def jaccard(a: str, b: str, shingle: int = DEFAULT_SHINGLE) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for reports and tests)."""
    sa, sb = shingles(a, shingle), shingles(b, shingle)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0

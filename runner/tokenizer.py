"""Load a tokenizer: the one place that does, once per tokenizer within a process.

One command needs the same tokenizer several times: the template check and the derived defaults of
`resolve`, the token lengths of the data check, the preview, eval. Loading it is not free (a 7B model's
tokenizer.json is 10-20 MB of JSON) and was done six times before `make train` reached Axolotl.

A tokenizer is cached by its folder (and the size and time of its tokenizer files, so a folder rewritten by
`tunebook model` or a training stage is loaded again) or by its hub id. The cached object is shared: a caller
that changes it (pad token, padding side, EOS) asks for `private=True` and gets its own copy.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

# The files that make a saved tokenizer (any one is enough for transformers to load it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "vocab.json", "merges.txt")

_CACHE: dict[tuple, object] = {}


def has_tokenizer(folder: Path) -> bool:
    """Does a model folder hold a saved tokenizer?"""
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _hub_folder(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id whose tokenizer is in the cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        f = try_to_load_from_cache(repo_id, "tokenizer_config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, no hub library: not in the cache
        return None
    return Path(f).parent if isinstance(f, str) else None


def _key(path_or_id: str) -> tuple:
    """A hub id whose files are cached and the snapshot folder holding them are the same tokenizer."""
    p = Path(path_or_id).expanduser()
    if not p.is_dir():
        p = _hub_folder(path_or_id)
        if p is None:
            return ("hub", path_or_id)
    stamp = []
    for name in TOKENIZER_FILES:
        try:
            st = os.stat(p / name)
        except OSError:
            continue
        stamp.append((name, st.st_size, st.st_mtime_ns))
    return ("dir", str(p.resolve()), tuple(stamp))


def load_tokenizer(path_or_id: str | Path, *, local_only: bool = False, private: bool = False):
    """The tokenizer of a model folder or hub id, loaded once per process.

    local_only: never download (a hub id must already be in the local cache; transformers raises otherwise).
    This is `local_files_only`, not `HF_HUB_OFFLINE`: the process environment is left alone.
    private: a copy the caller may modify; the shared one stays as loaded."""
    from transformers import AutoTokenizer

    name = str(path_or_id)
    key = _key(name)
    tok = _CACHE.get(key)
    if tok is None:
        tok = AutoTokenizer.from_pretrained(name, **({"local_files_only": True} if local_only else {}))
        _CACHE[key] = tok
        _CACHE.setdefault(_key(name), tok)  # a hub id downloaded just now: known by its folder from here on
    return copy.deepcopy(tok) if private else tok


def clear_cache() -> None:
    """Forget every loaded tokenizer (tests)."""
    _CACHE.clear()

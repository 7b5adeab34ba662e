"""Models named by a Hugging Face Hub id (`base_model: mistralai/Mistral-7B-Instruct-v0.3`): downloaded once into
the Hugging Face cache before anything is resolved or trained, with huggingface_hub's own progress bars, so the
first run and every later one resolve the same config (the derived rules read the model's tokenizer) and a
missing, gated or unreachable model fails before training, with the model page and the fix.

The endpoint is huggingface_hub's (`HF_ENDPOINT`, e.g. a mirror); the token is huggingface_hub's (`HF_TOKEN`, or
`hf auth login`): tunebook never reads, prints or records it. `HF_HUB_OFFLINE=1` uses the cache only.
"""
from __future__ import annotations

import os
from pathlib import Path

from runner.console import say
from runner.errors import TunebookError
from runner.recipe.load import TRAIN_KINDS, Recipe, looks_like_path

# What training, evaluation and merging read: weights, configs, tokenizer files, the chat template. Not the
# .bin/.pth copies many repos carry beside safetensors, nor GGUF/ONNX exports (often several times the model).
WEIGHTS = ["*.safetensors", "*.safetensors.index.json"]
LEGACY_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
SIDE_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def hub_models(rec: Recipe) -> list[str]:
    """The hub ids a recipe trains from (its base_model and any stage's own), in order, each once."""
    names = [rec.data.get("base_model")]
    names += [(s.body or {}).get("base_model") for s in rec.stages if s.kind in TRAIN_KINDS]
    return list(dict.fromkeys(str(n) for n in names if n and not looks_like_path(str(n))))


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def model_page(repo_id: str) -> str:
    return f"{endpoint().rstrip('/')}/{repo_id}"


def fetch_model(repo_id: str, where: str | None = None, revision: str | None = None) -> Path:
    """The local snapshot folder of a hub model, downloaded into the Hugging Face cache unless it is there
    (offline: the cache only). A TunebookError naming the model page and the fix when it cannot be had."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    page, cache_only = model_page(repo_id), offline()
    try:
        try:  # already complete in the cache: no request at all
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=WEIGHTS + SIDE_FILES,
                                          local_files_only=True))
            if _has_weights(path) or cache_only:
                return _checked(path, repo_id, where)
        except LocalEntryNotFoundError:
            if cache_only:
                raise
        say(f"downloading {repo_id} from {endpoint()} into the Hugging Face cache (once; later runs use the cache)")
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=WEIGHTS + SIDE_FILES))
        if not _has_weights(path):  # an older repo with only PyTorch .bin weights
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=LEGACY_WEIGHTS + SIDE_FILES))
        return _checked(path, repo_id, where)
    except GatedRepoError:
        raise TunebookError(
            f"the model {repo_id} is gated: its owners must grant you access before it can be downloaded",
            where=where, fix=f"Accept its licence on {page} while logged in, then give tunebook a token with "
                             "read access: `export HF_TOKEN=...` (or `hf auth login`).") from None
    except RepositoryNotFoundError:
        raise TunebookError(
            f"the model {repo_id} was not found on {endpoint()} (or it is private and no valid token was sent)",
            where=where, fix=f"Check the id on {page}; for a private model set HF_TOKEN to a token that can read "
                             "it.") from None
    except RevisionNotFoundError:
        raise TunebookError(f"the model {repo_id} has no revision {revision!r}", where=where,
                            fix=f"Pick a branch, tag or commit listed on {page}/tree/main.") from None
    except LocalEntryNotFoundError as exc:
        if not cache_only:  # huggingface_hub's answer when the endpoint cannot be reached and nothing is cached
            first = str(exc).splitlines()[0][:160]
            raise TunebookError(f"cannot download {repo_id}: {endpoint()} did not answer ({first})",
                                where=where, fix="Check the network (or HF_ENDPOINT); with the model already "
                                                 "cached, HF_HUB_OFFLINE=1 works without a network.") from None
        raise TunebookError(
            f"the model {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it",
            where=where, fix="Unset HF_HUB_OFFLINE for one run (it downloads the model once), or copy a cache "
                             f"that holds it to {_cache_dir()}.") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise TunebookError(f"the hub refused access to {repo_id} (HTTP {status})", where=where,
                                fix=f"Set HF_TOKEN to a token that can read {page} (and accept the model's "
                                    "licence there if it is gated).") from None
        raise TunebookError(f"downloading {repo_id} from {endpoint()} failed (HTTP {status}): "
                            f"{str(exc).splitlines()[0][:200]}", where=where,
                            fix="Retry; if it persists, check the hub's status or HF_ENDPOINT.") from None
    except (OSError, httpx.HTTPError) as exc:  # connection refused, DNS, timeouts (httpx), a full disk (OSError)
        raise TunebookError(f"cannot download {repo_id} from {endpoint()}: {type(exc).__name__}: "
                            f"{str(exc)[:200]}", where=where,
                            fix=f"Check the network (or HF_ENDPOINT) and free disk space in {_cache_dir()}; "
                                "with the model already cached, HF_HUB_OFFLINE=1 works without a network.") \
            from None


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def _checked(path: Path, repo_id: str, where: str | None) -> Path:
    if not (path / "config.json").is_file() or not _has_weights(path):
        raise TunebookError(f"{repo_id} has no config.json and weights (safetensors or pytorch_model.bin): it is "
                            "not a transformers model tunebook can train", where=where,
                            fix=f"Check the id on {model_page(repo_id)}; GGUF-only repos need converting first.")
    return path


def _cache_dir() -> str:
    from huggingface_hub import constants

    return os.fspath(constants.HF_HUB_CACHE)


def fetch_recipe_models(rec: Recipe) -> list[Path]:
    """Every hub model the recipe trains from, in the cache (downloaded now if needed)."""
    out = []
    for repo_id in hub_models(rec):
        try:
            where = rec.where("base_model")
        except Exception:  # noqa: BLE001 - a stage's own base_model: the file is enough
            where = str(rec.path)
        out.append(fetch_model(repo_id, where))
    return out

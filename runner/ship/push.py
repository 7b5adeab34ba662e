"""`tunebook push RECIPE --to user/name`: upload what the run ships to a Hugging Face Hub model repo.

The repo receives exactly what the export archive holds (runner.ship.export.package: the adapter or the merged
model, the model card as README.md, recipe.yaml, tunebook.lock, manifest.json), in one commit made with
huggingface_hub (create_repo, then create_commit; large files go through the Hub's LFS upload). Files an earlier
push left in the repo that this one does not ship are deleted in the same commit, so a repo that held the adapter
and now gets the merged model is not both at once (transformers would load it as an adapter). `.gitattributes`
is the Hub's and is kept.

The endpoint and the token are huggingface_hub's: `HF_ENDPOINT` (default https://huggingface.co) and `HF_TOKEN`,
or the token `hf auth login` stored. tunebook checks that one is there, hands it to huggingface_hub, and never
prints, logs or writes it; error messages are scrubbed of it in case a server echoes it back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from runner.console import say
from runner.errors import TunebookError
from runner.recipe.resolve import ResolvedRecipe
from runner.ship.export import package

# `huggingface-cli login` is gone from huggingface_hub 1.x (it says so and exits): `hf auth login` replaces it.
TOKEN_FIX = ("Set HF_TOKEN to a write token from {endpoint}/settings/tokens, or log in once with `hf auth login` "
             "(formerly `huggingface-cli login`)")


@dataclass(frozen=True)
class Pushed:
    """Where the push went: the repo page (a branch's tree for --revision), the commit and its page."""

    repo_id: str
    url: str
    commit: str
    commit_url: str
    files: int
    size: int
    private: bool | None


def check_repo_id(repo_id: str) -> str:
    """`namespace/name` as the Hub accepts it, else a TunebookError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    ok = repo_id.count("/") == 1 and all(repo_id.split("/"))
    if ok:
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            ok = False
    if not ok:
        raise TunebookError(f"--to {repo_id!r} is not a Hub model repo id",
                            fix="Name it as namespace/name, e.g. `--to your-user/hr-bot` (letters, digits, '-', '_', "
                                "'.'; no '--' or '..'; at most 96 characters).")
    return repo_id


def push(res: ResolvedRecipe, repo_id: str, fmt: str = "adapter", private: bool = False,
         revision: str | None = None) -> Pushed:
    """Upload the run's `fmt` package to `repo_id` (created if missing; `private` applies when it is created), on
    branch `revision` (created from main if missing) or main. Refuses, before any request, a bad repo id, a
    missing or gate-failed run, and a missing token; the Hub's refusals become TunebookErrors naming the repo."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token

    check_repo_id(repo_id)
    if revision is not None and (not revision.strip() or re.search(r"\s|\.\.|^/|/$|~|\^|:|\\", revision)):
        raise TunebookError(f"--revision {revision!r} is not a branch name",
                            fix="Name a branch, e.g. `--revision v1` (no spaces, '..', '~', '^', ':').")
    pkg = package(res, fmt, action="push")
    api = HfApi()
    endpoint = api.endpoint.rstrip("/")
    if constants.is_offline_mode():
        raise TunebookError(f"HF_HUB_OFFLINE is set: huggingface_hub makes no request, so nothing can be pushed to "
                            f"{repo_id}", fix="Unset HF_HUB_OFFLINE (or set it to 0) for the push.")
    token = get_token()
    if not token:
        raise TunebookError(f"no Hugging Face token: pushing to {repo_id} needs one with write access",
                            fix=TOKEN_FIX.format(endpoint=endpoint) + ", then run the push again.")
    items = pkg.items()
    size = sum(len(x) if isinstance(x, bytes) else x.stat().st_size for _, x in items)
    branch = revision or "main"
    say(f"pushing {pkg.name} ({len(items)} files, {size / 1e6:.1f} MB) to {endpoint}/{repo_id}"
        + (f" on branch {branch}" if revision else ""))
    try:
        api.create_repo(repo_id, private=private or None, exist_ok=True, token=token)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        shipped = {path for path, _ in items}
        stale = [p for p in api.list_repo_files(repo_id, revision=branch, token=token)
                 if p not in shipped and p != ".gitattributes"]
        ops = [CommitOperationDelete(path_in_repo=p) for p in stale]
        ops += [CommitOperationAdd(path_in_repo=path, path_or_fileobj=x if isinstance(x, bytes) else str(x))
                for path, x in items]
        info = api.create_commit(repo_id, ops, revision=branch, token=token,
                                 commit_message=f"tunebook push {res.recipe.name} ({fmt})",
                                 commit_description=f"Pushed by `tunebook push {res.recipe.name} --format {fmt}`: "
                                                    f"{', '.join(sorted(shipped))}.")
        visible = api.model_info(repo_id, revision=info.oid, token=token).private
    except Exception as exc:  # noqa: BLE001 - every failure of the Hub or the network, said once below
        raise _hub_error(exc, repo_id, endpoint, token) from None
    url = f"{endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")
    return Pushed(repo_id, url, info.oid, f"{endpoint}/{repo_id}/commit/{info.oid}", len(items), size, visible)


def _hub_error(exc: Exception, repo_id: str, endpoint: str, token: str) -> TunebookError:
    """One paragraph for a failed push: what the Hub (or the network) said, the repo, the fix; never the token."""
    import httpx
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    cause = exc  # huggingface_hub wraps a failed LFS upload in RuntimeError("Error while uploading ...")
    while not isinstance(cause, httpx.HTTPError) and cause.__cause__ is not None:
        cause = cause.__cause__
    page = f"{endpoint}/{repo_id}"
    server = _server_message(cause).replace(token, "***")
    status = getattr(getattr(cause, "response", None), "status_code", None)
    token_fix = TOKEN_FIX.format(endpoint=endpoint)
    if isinstance(cause, RevisionNotFoundError):
        return TunebookError(f"pushing to {repo_id} failed: the Hub has no such branch ({server})",
                             fix=f"Pick a branch listed on {page}/tree/main, or pass --revision to create one.")
    if status == 401:
        return TunebookError(f"the Hub at {endpoint} refused the token while pushing to {repo_id} (HTTP 401: "
                             f"{server})", fix=f"The token is invalid or expired. {token_fix}.")
    if status == 403 or isinstance(cause, GatedRepoError):
        ns = repo_id.split("/")[0]
        return TunebookError(f"the token may not write to {repo_id} (HTTP 403: {server})",
                             fix=f"Use a token with write access to the namespace '{ns}' (a read token cannot push; "
                                 f"a fine-grained one needs write permission on {ns}), or push to your own "
                                 f"namespace: create one at {endpoint}/settings/tokens and set HF_TOKEN.")
    if isinstance(cause, RepositoryNotFoundError) or status == 404:
        return TunebookError(f"the Hub at {endpoint} did not find {repo_id} while pushing (HTTP {status}: "
                             f"{server})", fix=f"Check the repo id and that the token's user may see {page}; "
                                               f"{token_fix}.")
    if isinstance(cause, HfHubHTTPError):
        return TunebookError(f"pushing to {repo_id} failed: the Hub at {endpoint} answered HTTP {status}: {server}",
                             fix=f"Retry; if it persists, check the Hub's status and {page}.", exit_code=1)
    if isinstance(cause, httpx.HTTPError):
        return TunebookError(f"cannot reach the Hub at {endpoint} to push {repo_id}: {type(cause).__name__}: "
                             f"{server}", fix="Check the network (and HF_ENDPOINT if you set it), then push again; "
                                              "nothing is half-written on the Hub: a push is one commit.",
                             exit_code=1)
    return TunebookError(f"pushing to {repo_id} failed: {type(cause).__name__}: {server}",
                         fix=f"Check {page} and retry.", exit_code=1)


def _server_message(exc: BaseException) -> str:
    """The server's own words (X-Error-Message / the JSON error), else the first line of the exception."""
    msg = getattr(exc, "server_message", None)
    if msg:
        return " ".join(str(msg).split())[:300]
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]

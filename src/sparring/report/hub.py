"""`push`: upload a policy directory to the Hugging Face Hub, validated first (the repo id, a saved model
with its weights); hub failures become UserErrors that name the repo and the remedy, never the token."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sparring.errors import UserError
from sparring.report.cards import is_ours, render_model_card
from sparring.report.runconfig import read_json, read_run_config

# A hub repo id: ORG/NAME, letters, digits, '-', '_', '.', at most 96 characters a name, no '--' or '..',
# not starting or ending with '-' or '.' (the hub's own rules, checked here before any network call)
_REPO_PART = r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise UserError(
            f"repo id {repo_id!r} must be ORG/NAME (your user name or an organization, then the model "
            "name), e.g. alice/smollm2-sppo-iter2"
        )
    org, _, name = repo_id.partition("/")
    for part, what in ((org, "ORG"), (name, "NAME")):
        if not re.fullmatch(_REPO_PART, part):
            raise UserError(
                f"repo id {repo_id!r}: {what} {part!r} may hold only letters, digits, '-', '_' and '.', "
                "at most 96 characters, without '--' or '..', and must not start or end with '-' or '.'"
            )


def check_policy_dir(policy_dir: Path) -> None:
    if not policy_dir.is_dir():
        raise UserError(f"{policy_dir}: no such directory (a saved policy, e.g. runs/NAME/iter_T/policy)")
    if not (policy_dir / "config.json").is_file():
        raise UserError(f"{policy_dir} has no config.json: not a saved Hugging Face model directory")
    if not any((policy_dir / f).is_file() for f in WEIGHT_FILES) and not list(policy_dir.glob("*.safetensors")):
        raise UserError(
            f"{policy_dir} has no weights (model.safetensors or pytorch_model.bin): was its save interrupted?"
        )


def _hub_error(exc: BaseException, repo_id: str, secrets: list[str]) -> UserError:
    """A UserError for a failed hub call: what went wrong with `repo_id` and what to do."""
    from huggingface_hub import errors

    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for s in secrets:  # the hub does not echo tokens, but the message is printed: make sure
        if s:
            detail = detail.replace(s, "<token>")
    if isinstance(exc, errors.LocalTokenNotFoundError):
        return UserError(
            f"push to {repo_id}: no Hugging Face token found; log in with `hf auth login` or set HF_TOKEN "
            "to a token with write access"
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return UserError(f"push to {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    if isinstance(exc, errors.HFValidationError):
        return UserError(f"push to {repo_id}: the hub rejects this repo id ({detail})")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return UserError(
                f"push to {repo_id}: the hub rejected the token (HTTP 401: invalid or expired); log in "
                "again with `hf auth login` or set HF_TOKEN to a valid token"
            )
        if status == 403:
            return UserError(
                f"push to {repo_id}: the token may not write to {repo_id.split('/')[0]!r} (HTTP 403); use "
                "a token with write access, and an organization you are a member of"
            )
        if status == 404:
            return UserError(
                f"push to {repo_id}: the hub found no such repository, or the token cannot see it "
                "(HTTP 404); check the repo id and the token's permissions"
            )
        if status == 429:
            return UserError(f"push to {repo_id}: the hub is rate-limiting these requests (HTTP 429); wait and retry")
        return UserError(f"push to {repo_id}: the hub answered HTTP {status}: {detail}")
    return UserError(
        f"push to {repo_id}: could not reach the Hugging Face Hub ({type(exc).__name__}: {detail}); "
        "check the network connection (and HF_ENDPOINT, if set), then retry"
    )


def push(policy_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, api=None) -> str:
    """Upload a saved policy directory to the hub repo `repo_id` (created if needed); returns its URL.
    A run's policy is uploaded with a fresh model card whose snippet loads `repo_id`, rendered in memory:
    push writes nothing in the run (which may be running, or read-only). `token`: None uses the logged-in
    token (`hf auth login`, HF_TOKEN). `api`: an HfApi or a stand-in with its create_repo, upload_folder
    and upload_file."""
    policy_dir = Path(policy_dir)
    check_repo_id(repo_id)
    check_policy_dir(policy_dir)
    run = _run_of_policy(policy_dir)
    card = None
    if run is not None and is_ours(policy_dir / "README.md"):
        from sparring.rundir import RunDir

        run_dir, t = run
        try:
            stages = RunDir(run_dir).manifest()["stages"]
        except UserError:
            stages = {}
        card = render_model_card(
            run_dir=run_dir,
            iteration=t,
            cfg=read_run_config(run_dir),
            summary=read_json(run_dir / "summary.json"),
            repo_id=repo_id,
            stages=stages,
        )
    from huggingface_hub import HfApi, errors

    if api is None:
        api = HfApi(token=token)
    auth = {"token": token} if token is not None else {}
    # Network failures arrive as the hub's HTTP errors, its transport-level HTTPError, or plain OSErrors
    hub_errors = (
        errors.HfHubHTTPError,
        getattr(errors, "HTTPError", OSError),
        errors.LocalTokenNotFoundError,
        errors.HFValidationError,
        errors.OfflineModeIsEnabled,
        OSError,
    )
    secrets = [token or "", os.environ.get("HF_TOKEN", "")]
    name = policy_dir.parent.parent.name + "/" + policy_dir.parent.name if run else policy_dir.name
    ignore = [".*.tmp", ".*.tmp/*"] + (["README.md"] if card is not None else [])
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", **auth)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(policy_dir),
            repo_type="model",
            commit_message=f"sparring: upload {name}",
            ignore_patterns=ignore,
            **auth,
        )
        if card is not None:
            api.upload_file(
                path_or_fileobj=card.encode("utf-8"),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="model",
                commit_message=f"sparring: model card of {name}",
                **auth,
            )
    except hub_errors as exc:
        raise _hub_error(exc, repo_id, secrets) from None
    endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
    return f"{str(endpoint).rstrip('/')}/{repo_id}"


def _run_of_policy(policy_dir: Path) -> tuple[Path, int] | None:
    """(run directory, t) when `policy_dir` is a run's iter_t/policy."""
    m = re.fullmatch(r"iter_(\d+)", policy_dir.parent.name)
    if policy_dir.name == "policy" and m and (policy_dir.parent.parent / "config.yaml").is_file():
        return policy_dir.parent.parent, int(m.group(1))
    return None

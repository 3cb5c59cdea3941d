"""`--push-to-hub REPO`: upload a run's trained policy to the hub repository REPO and the reward model it trained
to REPO-reward-model (huggingface_hub's create_repo and upload_folder), private unless --hub-public.

Two separate repositories rather than one with a subfolder: each loads with a plain `from_pretrained(REPO)`, and
each card carries its own metadata (a text-generation policy, a text-classification reward model), as TRL's
reward models and policies live apart too.

`check_access` runs before any stage does: no token, a token the hub rejects, an unreachable hub, or a namespace
the token's user cannot write to fails in one line before hours of training rather than after them. `push_run`
then rewrites each model's card with its repository id (its usage code loads that id) and uploads the directory as
it is: weights, tokenizer, card, training_run.json, eval.json, adapter/.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants, create_repo, get_token, upload_folder, whoami
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from common import runlock
from common.config import Config
from common.errors import PathNotFound, UserError, brief
from common.paths import RunPaths
from stages.export import write_card

REWARD_SUFFIX = "-reward-model"


class HubError(UserError):
    """The upload cannot happen; the message names --push-to-hub and what to do."""


def network_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: huggingface_hub 2.x sends through httpx2, 1.x through httpx; offline mode
    raises a ConnectionError."""
    found: list[type[BaseException]] = [ConnectionError]
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(name).TransportError)
    return tuple(found)


@contextlib.contextmanager
def hub_errors(repo: str, then: str) -> Iterator[None]:
    """The hub's refusals and a missing network as one line naming --push-to-hub REPO; `then` says what to do
    after fixing it (before the run: leave out the flag; after it: push the finished run)."""
    flag = f"--push-to-hub {repo}"
    try:
        yield
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubError(f"{flag}: the hub rejected the token (401): log in again with `hf auth login` or set "
                           f"HF_TOKEN to a valid token with write access, {then}") from e
        if status == 403:
            raise HubError(f"{flag}: the token may not write there (403): the repository belongs to someone else "
                           f"or the token is read-only; push to a repository under your own name or an "
                           f"organisation you can write to, or use a write token, {then}") from e
        first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{flag}: the hub answered {status}: {first}; {then}") from e
    except network_errors() as e:
        raise HubError(f"{flag}: cannot reach the hub at {constants.ENDPOINT} ({brief(e)}): check the network "
                       f"(or HF_ENDPOINT), {then}") from e


def check_access(repo: str) -> str:
    """The full repository id REPO names (a bare name goes under the token's user), once a token is there, the
    hub accepts it and its user may write to REPO's namespace. Called before any stage runs."""
    then = "or leave out --push-to-hub"
    token = get_token()
    if token is None:
        raise HubError(f"--push-to-hub {repo}: no Hugging Face token: log in with `hf auth login` or set HF_TOKEN "
                       f"(a token with write access), {then}")
    with hub_errors(repo, then):
        me = whoami(token=token)
    namespace, _, name = repo.rpartition("/")
    repo_id = f"{namespace or me['name']}/{name}"
    for target in (repo_id, repo_id + REWARD_SUFFIX):
        try:
            validate_repo_id(target)
        except HFValidationError as e:
            raise HubError(f"--push-to-hub {repo}: {target} is not a valid repository id ({brief(e)}); use "
                           f"NAME or USER/NAME with letters, digits, '-', '_' and '.'") from e
    orgs = [org["name"] for org in me.get("orgs", [])]
    if namespace and namespace not in (me["name"], *orgs):
        mine = ", ".join([me["name"], *orgs])
        raise HubError(f"--push-to-hub {repo}: {namespace} is neither your account nor one of your organisations "
                       f"({mine}); push to {me['name']}/{name}, or to an organisation you belong to, {then}")
    return repo_id


def push_run(cfg: Config, repo_id: str, private: bool = True) -> list[str]:
    """Upload the run's policy/ to `repo_id` and its reward_model/ (when this run trained it and the policy's
    reward used it) to `repo_id`-reward-model; each card is rewritten first with the id its usage code loads.
    Returns the URLs."""
    paths = RunPaths(cfg)
    if not (paths.trained_policy / "config.json").is_file():
        raise PathNotFound(f"--push-to-hub {repo_id}: no trained policy at {paths.trained_policy}: run --stage rl "
                           f"(and --stage eval, whose figures go into its card) first, or point run_dir at a "
                           f"finished run")
    runlock.acquire(cfg.run_dir)  # no stage may replace policy/ while it uploads
    targets = [(paths.trained_policy, repo_id, "policy")]
    if not cfg.reward.model_weight:
        print("[push] no reward model pushed: reward.model_weight=0 (the policy's reward is reward.functions')",
              flush=True)
    elif cfg.reward.path:
        print(f"[push] reward model not pushed: reward.path={cfg.reward.path} was not trained by this run",
              flush=True)
    elif (paths.reward_out / "config.json").is_file():
        targets.append((paths.reward_out, repo_id + REWARD_SUFFIX, "reward model"))
    then = f"then push the finished run with --stage push --push-to-hub {repo_id} (its files are kept)"
    urls = []
    for folder, target, what in targets:
        if not write_card(folder, model_id=target):
            print(f"[push] warning: {folder} has no training_run.json (saved by an older version): uploaded "
                  f"without a new card", flush=True)
        with hub_errors(target, then):
            url = create_repo(target, private=private, exist_ok=True)
            upload_folder(repo_id=target, folder_path=folder, commit_message=commit_message(what, cfg))
        print(f"[push] {folder} -> {url} ({'private' if private else 'public'}; an existing repository keeps "
              f"its visibility)", flush=True)
        urls.append(str(url))
    return urls


def commit_message(what: str, cfg: Config) -> str:
    return f"Upload the {what} of the REINFORCE RLHF run {Path(cfg.run_dir).name} (seed {cfg.seed})"

"""--push-to-hub through launch.py against a fake hub: huggingface_hub's own create_repo and upload_folder run, and
its HTTP client (set_client_factory, huggingface_hub's documented hook for a custom client) is given a transport
that answers the hub's endpoints in-process and records them. No request leaves the machine."""

from __future__ import annotations

import base64
import importlib
import json

import huggingface_hub
import pytest
from huggingface_hub import ModelCard
from packaging.version import Version

import launch
from common.config import load_config
from common.models import build_tiny_policy, load_reward_model
from helpers import CONFIG, CPU, TINY, check_one_line, eval_result
from stages.export import save_trained
from stages.model_card import training_record

# huggingface_hub 2.x sends through httpx2, 1.x through httpx: the fake answers through the one it uses
http = importlib.import_module("httpx2" if Version(huggingface_hub.__version__).major >= 2 else "httpx")


class FakeHub:
    """The endpoints create_repo and upload_folder call, for user alice (member of org team): whoami, repo create,
    README metadata validation, preupload (every file 'regular': its bytes travel in the commit) and commit."""

    def __init__(self, whoami_status=200, create_status=200, down=False):
        self.whoami_status, self.create_status, self.down = whoami_status, create_status, down
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.commits: dict[str, dict[str, bytes]] = {}  # repo id -> {path: bytes}

    def __call__(self, request):
        if self.down:
            raise http.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/api/whoami-v2":
            return http.Response(self.whoami_status, json={"name": "alice", "type": "user",
                                                           "orgs": [{"name": "team"}]})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            repo = f"{body['organization']}/{body['name']}"
            return http.Response(self.create_status, json={"url": f"https://huggingface.co/{repo}"})
        if path == "/api/validate-yaml":
            return http.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return http.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            lines = [json.loads(line) for line in request.content.splitlines()]
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.commits.setdefault(repo, {}).update(files)
            return http.Response(200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/{'a' * 40}",
                                            "commitOid": "a" * 40})
        return http.Response(404, json={"error": f"not faked: {path}"})


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Install a FakeHub as huggingface_hub's transport (a test swaps in another with `install`); a token in
    HF_TOKEN, none stored on disk."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_stored_token"))

    def install(fake: FakeHub) -> FakeHub:
        huggingface_hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(fake)))
        return fake
    install.fake = install(FakeHub())
    yield install
    # set_client_factory has no getter: put back huggingface_hub's own default for the tests after this one
    huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


@pytest.fixture
def finished_run(tmp_path, tokenizer):
    """A run directory as --stage all leaves it: a policy with its evaluation, and the reward model it trained."""
    run, cfg = tmp_path / "run", load_config(None)
    policy = save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, run / "policy",
                          training_record("policy", cfg, run))
    (policy / "eval.json").write_text(json.dumps(eval_result()))
    build_tiny_policy(TINY, tokenizer, 1).save_pretrained(tmp_path / "init")
    rm = load_reward_model(str(tmp_path / "init"), 1, tokenizer, CPU)
    save_trained(rm, tokenizer, run / "reward_model", training_record("reward", cfg, run))
    return run


def push(run, *extra) -> int:
    return launch.main(["--config", CONFIG, "--stage", "push", "--push-to-hub", "demo", *extra, f"run_dir={run}"])


def test_push_uploads_the_policy_and_the_reward_model_privately(hub, finished_run, capsys):
    fake = hub.fake
    assert push(finished_run) == 0
    # huggingface_hub itself fetches its agent registry (/api/agent-harnesses, once a day): not ours to check
    ours = [request for request in fake.requests if request[1] != "/api/agent-harnesses"]
    upload = [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml")]
    assert ours == [("GET", "/api/whoami-v2"),  # the token, before anything else
                    *upload, ("POST", "/api/models/alice/demo/preupload/main"),
                    ("POST", "/api/models/alice/demo/commit/main"),
                    *upload, ("POST", "/api/models/alice/demo-reward-model/preupload/main"),
                    ("POST", "/api/models/alice/demo-reward-model/commit/main")]
    assert [(c["organization"], c["name"], c["visibility"]) for c in fake.created] == [
        ("alice", "demo", "private"), ("alice", "demo-reward-model", "private")]
    assert set(fake.commits) == {"alice/demo", "alice/demo-reward-model"}
    for repo, folder in (("alice/demo", "policy"), ("alice/demo-reward-model", "reward_model")):
        files = fake.commits[repo]
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                "training_run.json"} <= set(files), repo
        for name, content in files.items():
            assert content == (finished_run / folder / name).read_bytes(), name
        card = ModelCard(files["README.md"].decode())
        assert f'from_pretrained("{repo}")' in card.text and card.data.library_name == "transformers"
    assert "eval.json" in fake.commits["alice/demo"] and "reward_head.json" not in fake.commits["alice/demo"]
    assert "| in-distribution | 204 |" in fake.commits["alice/demo"]["README.md"].decode(), "the eval table kept"
    assert "-> https://huggingface.co/alice/demo (private" in capsys.readouterr().out


def test_hub_public_and_an_organisation(hub, finished_run):
    assert push(finished_run, "--hub-public", "--push-to-hub", "team/demo") == 0
    assert [(c["organization"], c["name"], c["visibility"]) for c in hub.fake.created] == [
        ("team", "demo", "public"), ("team", "demo-reward-model", "public")]


def test_a_run_without_a_reward_model_pushes_the_policy_alone(hub, finished_run, capsys):
    """reward.model_weight=0: the policy's reward is reward.functions' alone; a reward_model/ left by an earlier
    run is not the one it was trained against, so it stays."""
    assert push(finished_run, "reward.model_weight=0", "reward.functions=sandbox_gold") == 0
    assert set(hub.fake.commits) == {"alice/demo"}
    assert "no reward model pushed: reward.model_weight=0" in capsys.readouterr().out


@pytest.mark.parametrize("fault,needles", [
    ("no_token", ["--push-to-hub demo: no Hugging Face token", "hf auth login", "HF_TOKEN"]),
    ("rejected", ["--push-to-hub demo: the hub rejected the token (401)", "hf auth login"]),
    ("not_yours", ["--push-to-hub bob/demo: bob is neither your account nor one of your organisations (alice, "
                   "team); push to alice/demo"]),
    ("offline", ["--push-to-hub demo: cannot reach the hub at", "check the network"]),
])
def test_access_is_checked_before_any_stage_runs(fault, needles, hub, tmp_path, capsys, monkeypatch):
    """No token, a rejected token, someone else's namespace, no network: one line naming the flag, before the rm
    stage has written anything."""
    if fault == "no_token":
        monkeypatch.delenv("HF_TOKEN")
    fake = hub(FakeHub(whoami_status=401 if fault == "rejected" else 200, down=fault == "offline"))
    repo = "bob/demo" if fault == "not_yours" else "demo"
    rc = launch.main(["--config", CONFIG, "--stage", "rm", "--push-to-hub", repo, f"run_dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    check_one_line(rc, out.out, out.err, *needles, code=1)
    assert not (tmp_path / "run").exists(), "no stage ran"
    assert fake.created == [] and fake.commits == {}


def test_a_refused_upload_says_what_to_do_and_keeps_the_run(hub, finished_run, capsys):
    """The hub refuses the repository (403: someone else's, or a read-only token) after the stages have run."""
    fake = hub(FakeHub(create_status=403))
    before = (finished_run / "policy" / "model.safetensors").read_bytes()
    rc = push(finished_run, "--push-to-hub", "team/demo")
    out = capsys.readouterr()
    check_one_line(rc, out.out, out.err, "--push-to-hub team/demo: the token may not write there (403)",
                   "belongs to someone else", "--stage push --push-to-hub team/demo", code=1)
    assert fake.commits == {} and (finished_run / "policy" / "model.safetensors").read_bytes() == before


def test_push_needs_a_repository_and_a_trained_policy(hub, tmp_path, capsys):
    rc = launch.main(["--config", CONFIG, "--stage", "push", f"run_dir={tmp_path}"])
    out = capsys.readouterr()
    check_one_line(rc, out.out, out.err, "--stage push uploads a finished run", "--push-to-hub REPO", code=2)
    rc = push(tmp_path)
    out = capsys.readouterr()
    check_one_line(rc, out.out, out.err, f"no trained policy at {tmp_path / 'policy'}", "--stage rl", code=1)

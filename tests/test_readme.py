"""Every `launch.py` command in README.md parses and its config and overrides load, so the lines a Colab, Kaggle,
single-GPU or cluster user copies stay true when keys change. (Running them needs a GPU and the hub.)"""

import re
import shlex
from pathlib import Path

import pytest

import launch
from common.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def launch_commands(text: str) -> list[list[str]]:
    """The arguments after `launch.py` in every command of the README (code blocks and `inline code`)."""
    text = text.replace("\\\n", " ")  # shell line continuations
    found = []
    for line in text.splitlines():
        for match in re.finditer(r"python launch\.py([^`#|\n]*)", line):
            found.append(shlex.split(match.group(1)))
    return found


COMMANDS = launch_commands((ROOT / "README.md").read_text())


def test_the_readme_has_the_users_commands():
    configs = {args[args.index("--config") + 1] for args in COMMANDS if "--config" in args}
    assert {"configs/smollm2_helpsteer2.yaml", "configs/smollm2_helpsteer2_distributional.yaml"} <= configs
    assert any("--mode" in args and "cluster.placement_timeout_s=1800" in args for args in COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_launch_command_loads(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    parsed = launch.parse_args(args)
    load_config(parsed.config, parsed.overrides)

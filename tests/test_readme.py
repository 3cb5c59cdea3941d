"""Every `launch.py` command in the documentation parses and its config and overrides load, so the lines a Colab,
Kaggle, single-GPU or cluster user copies stay true when keys change. (Running them needs a GPU and the hub.)

The documentation is README.md, every docs/*.md and bench/README.md. A command is `python launch.py ...` on a line
of a fenced code block (shell line continuations joined; it ends at a `#` comment or a `|`), or inside an
`inline code` span of the prose, which may wrap over lines of one paragraph. Commands are written to run as they
stand: a path the reader would fill in is written out (`reward.path=runs/ifeval/default/seed_0/reward_model`), not
as a `<placeholder>`; a placeholder would fail here, on purpose."""

import re
import shlex
from pathlib import Path

import pytest

import launch
from common.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
PARAGRAPH = re.compile(r"(?:[^\n]|\n(?![ \t]*\n))+")  # lines up to a blank line
SPAN = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"python launch\.py([^`#|\n]*)")


def launch_commands(text: str) -> list[tuple[int, str]]:
    """(line, the arguments after `launch.py` as written) for every command of one markdown text: on a line of a
    fenced code block, shell line continuations joined, or in an `inline code` span, which may wrap within its
    paragraph (its line breaks read as spaces)."""
    joined = text.replace("\\\n", "  ")  # shell line continuations; the same length, so positions keep their line
    found = []

    def add(pos: int, arguments: str) -> None:
        found.append((text.count("\n", 0, pos) + 1, arguments.strip()))

    for block in FENCE.finditer(joined):
        for cmd in COMMAND.finditer(block.group(1)):
            add(block.start(1) + cmd.start(), cmd.group(1))
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), joined)  # code blocks blanked, positions kept
    for paragraph in PARAGRAPH.finditer(prose):
        for span in SPAN.finditer(paragraph.group()):
            for cmd in COMMAND.finditer(span.group(1).replace("\n", " ")):
                add(paragraph.start() + span.start(), cmd.group(1))
    return sorted(found, key=lambda item: item[0])


def collect() -> list[tuple[str, int, str]]:
    """(file relative to the repository root, line, arguments) for every command of the documentation."""
    return [(path.relative_to(ROOT).as_posix(), line, args)
            for path in DOCS for line, args in launch_commands(path.read_text())]


COMMANDS = collect()


def test_the_collector_reads_blocks_continuations_and_wrapped_inline_code():
    text = ("```bash\npython launch.py --stage rl   # one stage\nray job submit -- \\\n"
            "  python launch.py --mode ray \\\n  run_dir=r\n```\n\nprose `python launch.py --config\n"
            "configs/tiny.yaml seed=1` and `make demo`\n\n| a | `python launch.py --seeds 0,1` |\n"
            "`python launch.py`, the default\n")
    assert [(line, shlex.split(args)) for line, args in launch_commands(text)] == [
        (2, ["--stage", "rl"]), (4, ["--mode", "ray", "run_dir=r"]), (8, ["--config", "configs/tiny.yaml", "seed=1"]),
        (11, ["--seeds", "0,1"]), (12, [])]


def test_every_documentation_file_is_read():
    assert {"README.md", "bench/README.md", "docs/ray.md"} <= {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {name for name, _, _ in COMMANDS} >= {"README.md", "docs/ray.md", "docs/real_model.md"}


def test_the_docs_have_the_users_commands():
    """The README plus the docs pages hold the users' commands: both HelpSteer2 configs, and the cluster command;
    the README itself, the Level 1 run on one GPU."""
    commands = [shlex.split(args) for _, _, args in COMMANDS]
    in_readme = [shlex.split(args) for name, _, args in COMMANDS if name == "README.md"]
    assert ["--config", "configs/smollm2_helpsteer2.yaml"] in in_readme
    configs = {args[args.index("--config") + 1] for args in commands if "--config" in args}
    assert {"configs/smollm2_helpsteer2.yaml", "configs/smollm2_helpsteer2_distributional.yaml"} <= configs
    assert any("--mode" in args and "cluster.placement_timeout_s=1800" in args for args in commands)


def _test_id(name: str, line: int, args: str) -> str:
    return f"{name}:{line} {' '.join(args.split()) or '(no arguments)'}"[:100]


@pytest.mark.parametrize("name,line,args", COMMANDS, ids=[_test_id(*command) for command in COMMANDS])
def test_documented_launch_command_loads(name, line, args, monkeypatch):
    monkeypatch.chdir(ROOT)
    parsed = launch.parse_args(shlex.split(args))
    load_config(parsed.config, parsed.overrides)

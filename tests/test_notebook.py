"""notebooks/colab.ipynb cannot rot: its cells run here, on the offline tiny config, in one namespace as a kernel
would run them. Cells tagged `colab-only` (GPU check, Google Drive, install, TensorBoard) only have to parse. Its
`launch()` shows a child's output as a terminal would (a progress bar's redraws are one line, not one line each)."""

import ast
import io
import json
import re
from pathlib import Path

import IPython.display
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager
from tqdm import tqdm

from common.config import load_config
from helpers import FAST

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = json.loads((ROOT / "notebooks" / "colab.ipynb").read_text())
CODE = [("".join(c["source"]), c["metadata"].get("tags", [])) for c in NOTEBOOK["cells"] if c["cell_type"] == "code"]
PARAMETERS = {"REPO_URL", "USE_LORA", "LEVEL1_CONFIG", "LEVEL2_CONFIG", "OVERRIDES", "RUN_ROOT"}
# the notebook's OVERRIDES here: FAST (tests/helpers.py), 40 out-of-distribution pairs (not 400), 3 RL steps sampled
# with hf
RUN_OVERRIDES = [*FAST, "sandbox.num_ood_pairs=40", "rl.steps=3", "eval.bootstrap_samples=100", "generator.backend=hf"]


def assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}


def test_the_first_code_cell_holds_exactly_the_parameters_the_test_replaces():
    source, tags = CODE[0]
    assert tags == ["parameters"] and assigned_names(source) == PARAMETERS
    assert "configs/smollm2_helpsteer2.yaml" in source and "configs/smollm2_helpsteer2_distributional.yaml" in source


def test_use_lora_picks_the_lora_configs_of_both_levels():
    """USE_LORA (off by default) switches both levels to their LoRA configs (tests/test_config.py: the same runs with
    LoRA adapters; tests/test_vllm.py runs their LoRA settings on the tiny model)."""
    source, _ = CODE[0]
    assert source.count("USE_LORA = False\n") == 1
    for use_lora in (False, True):
        namespace = {}
        exec(source.replace("USE_LORA = False\n", f"USE_LORA = {use_lora}\n"), namespace)
        level1, level2 = (load_config(ROOT / namespace[k]) for k in ("LEVEL1_CONFIG", "LEVEL2_CONFIG"))
        assert level1.model.lora.enabled is level2.model.lora.enabled is use_lora
        assert (level1.reward.head, level2.reward.head) == ("scalar", "distributional")


def test_colab_only_cells_parse_and_install_with_the_install_script():
    colab = [source for source, tags in CODE if "colab-only" in tags]
    for source in colab:
        ast.parse(TransformerManager().transform_cell(source))  # IPython magics (%tensorboard) made Python
    assert any("scripts/install.py" in s for s in colab) and any("drive.mount" in s for s in colab)


def test_tensorboard_starts_before_the_first_training_cell():
    sources = [source for source, _ in CODE]
    tensorboard = next(i for i, s in enumerate(sources) if "%tensorboard" in s)
    training = next(i for i, s in enumerate(sources) if re.search(r"^launch\(\"--config\"", s, re.M))
    assert tensorboard < training, "TensorBoard shows Level 1 while it trains"


def helpers():
    """The namespace of the cell that defines launch() and the helpers it streams the child's output with."""
    namespace = {"RUN_ROOT": "runs"}
    exec(next(source for source, _ in CODE if "def launch(" in source), namespace)
    return namespace


def bars_output() -> str:
    """What a stage writes: an outer bar whose steps run inner bars that clear themselves (leave=False) and print
    notes (tqdm.write), every bar at position 0 (TQDM_POSITION=0, set by launch()), refreshed at every step."""
    out = io.StringIO()
    outer = tqdm(total=3, desc="rl (local)", file=out, position=0, mininterval=0, ascii=True)
    for step in range(3):
        for _ in tqdm(range(2), desc="eval generate", file=out, position=0, leave=False, mininterval=0, ascii=True):
            pass
        outer.set_postfix(reward=f"{step / 10:.3f}", refresh=False)
        outer.update()
        tqdm.write(f"note {step}", file=out)
    outer.close()
    print("done", file=out)
    return out.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_launch_prints_each_bar_once_in_its_final_state(chunk, capsys):
    text = bars_output()
    assert text.count("\r") > 10, "the bars redrew many times"
    ns = helpers()
    ns["echo"](ns["console_events"](text[i:i + chunk] for i in range(0, len(text), chunk)), notebook=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["note 0", "note 1", "note 2"] and lines[4:] == ["done"] and len(lines) == 5
    assert re.match(r"rl \(local\): 100%\|#+\| 3/3 .*reward=0\.200\]$", lines[3]), lines[3]


def test_in_a_notebook_the_redrawn_line_updates_in_place_and_keeps_its_final_text(capsys, monkeypatch):
    class Handle:
        def __init__(self, obj):
            self.texts = [obj.data]

        def update(self, obj):
            self.texts.append(obj.data)

    handles = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id: handles.append(Handle(obj)) or handles[-1])
    ns = helpers()
    text = bars_output()[:-4]  # the output up to the first letter of its last line ("done")
    ns["echo"](ns["console_events"](text[i:i + 5] for i in range(0, len(text), 5)), notebook=True)
    final = [h.texts[-1] for h in handles]
    assert final[:3] == ["note 0", "note 1", "note 2"], "a note takes the place of the bar it cleared"
    assert final[3].startswith("rl (local): 100%") and final[4] == "d", "the unfinished last line stays live"
    assert len(handles[3].texts) > 3, "the bar was redrawn in place"
    assert capsys.readouterr().out == "", "nothing printed beside the displays"


@pytest.mark.slow
def test_notebook_runs_level1_then_level2_and_shows_the_report(tmp_path, monkeypatch, capsys):
    level2 = tmp_path / "level2.yaml"  # Level 2 on the tiny model: the tiny config with the distributional head
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    level2.write_text(yaml.safe_dump(cfg | {"reward": cfg["reward"] | {"head": "distributional"}}))
    runs = tmp_path / "runs"
    parameters = (f"LEVEL1_CONFIG = 'configs/tiny.yaml'\nLEVEL2_CONFIG = {str(level2)!r}\n"
                  f"OVERRIDES = {RUN_OVERRIDES!r}\nRUN_ROOT = {str(runs)!r}\n")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))  # the notebook front end
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the stages' progress bars, as in Colab
    namespace = {}
    for i, (source, tags) in enumerate(CODE):
        if "colab-only" not in tags:
            exec(compile(parameters if "parameters" in tags else source, f"notebook cell {i}", "exec"), namespace)

    for level, head in (("level1", "scalar"), ("level2", "distributional")):
        assert json.loads((runs / level / "rm_metrics.json").read_text())["head"] == head
        assert (runs / level / "eval.json").is_file() and (runs / level / "report" / "report.md").is_file()
    report = (runs / "report" / "report.md").read_text()
    markdown = [o for o in shown if isinstance(o, IPython.display.Markdown)]
    images = [o for o in shown if isinstance(o, IPython.display.Image)]
    assert [m.data for m in markdown] == [report] and str(runs / "level1") in report and str(runs / "level2") in report
    assert len(images) == len(list((runs / "report").glob("*.png"))) > 0
    assert all(img.data.startswith(b"\x89PNG") for img in images)

    printed = capsys.readouterr().out.splitlines()
    bars = [m for m in (re.search(r"^(.*?): +\d+%\|.*\| (\d+)/(\d+) \[", line) for line in printed) if m]
    assert bars and all(m[2] == m[3] for m in bars), "each bar prints once, finished; its redraws never"
    assert sum(m[1] == "rl (local)" for m in bars) == 2, "one line per level's RL bar"
    assert len(printed) < 160, len(printed)  # 120 when written; 288 when launch() printed every redraw as a line

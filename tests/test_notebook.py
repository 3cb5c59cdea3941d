"""notebooks/colab.ipynb cannot rot: its cells run here, on the offline tiny config, in one namespace as a kernel
would run them. Cells tagged `colab-only` (GPU check, Google Drive, install, TensorBoard) only have to parse."""

import ast
import json
from pathlib import Path

import IPython.display
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

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


@pytest.mark.slow
def test_notebook_runs_level1_then_level2_and_shows_the_report(tmp_path, monkeypatch):
    level2 = tmp_path / "level2.yaml"  # Level 2 on the tiny model: the tiny config with the distributional head
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    level2.write_text(yaml.safe_dump(cfg | {"reward": cfg["reward"] | {"head": "distributional"}}))
    runs = tmp_path / "runs"
    parameters = (f"LEVEL1_CONFIG = 'configs/tiny.yaml'\nLEVEL2_CONFIG = {str(level2)!r}\n"
                  f"OVERRIDES = {RUN_OVERRIDES!r}\nRUN_ROOT = {str(runs)!r}\n")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))  # the notebook front end
    monkeypatch.chdir(ROOT)
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

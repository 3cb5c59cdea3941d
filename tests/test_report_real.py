"""stages/report_real.py: the real-model experiment's headline lines (issue 26's exact wording), their values and
intervals from the runs' files, and its figure."""

import hashlib
import json
import re

import matplotlib.image
import numpy as np

from common.config_eval import EvalConfig
from experiments import real_model
from stages.best_of_n import summarize_pool
from stages.report_real import collect, real_model_section
from tasks import ifeval

LINE = r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]"


PROMPTS = {"val": ["Describe the sea. No commas.", "Tell me about bees. No commas.", "Describe rain. Add a title.",
                   "Describe snow. Add a title."],
           "ood": ["Give tips. Highlight 2 sections.", "Describe a cat. Highlight 2 sections.",
                   "Describe a dog. Use 'bark' twice.", "Describe a bird. Use 'wing' twice."]}
TYPES = ["punctuation:no_comma"] * 2 + ["detectable_format:title"] * 2 + \
    ["detectable_format:number_highlighted_sections"] * 2 + ["keywords:frequency"] * 2


def pool(trained: list[float], sft: list[float], kl: float, split: str = "val") -> dict:
    """The parts of one eval.json pool the section reads (per-prompt strict accuracy, each a mean of answers)."""
    sha = hashlib.sha256("\n".join(PROMPTS[split]).encode()).hexdigest()
    return {"prompts_sha256": sha, "confidence": 0.95, "samples_per_prompt": 4,
            "per_prompt": {"trained": {"gold": trained}, "sft": {"gold": sft}},
            "policies": {"sft": {"gold_mean": float(np.mean(sft)), "length_mean": 70.0},
                         "trained": {"gold_mean": float(np.mean(trained)), "kl_to_ref": kl, "length_mean": 60.0}}}


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_headline_lines_hold_the_runs_gains_and_the_figure_is_drawn(tmp_path):
    sft = [0.5, 0.25, 0.75, 0.0]
    for s, step in enumerate((0.25, 0.0, 0.5)):  # per seed: the verifier policy gains `step` on every prompt
        trained = [min(1.0, x + step) for x in sft]
        write(tmp_path / real_model.VERIFIER / f"seed_{s}" / "eval.json", {**pool(trained, sft, 1.0),
                                                                          "ood": pool(sft, sft, 1.2, "ood")})
        write(tmp_path / real_model.rm_name(real_model.KL_COEFS[0]) / f"seed_{s}" / "eval.json", {**pool(sft, sft, 0.5),
                                                                                "ood": pool(sft, sft, 0.6, "ood")})
    for k in real_model.KL_COEFS:
        for s in range(3):
            write(tmp_path / real_model.rm_name(k) / f"seed_{s}" / "validation.json",
                  {"comparisons": {"gold": {"diff_mean": 0.1 if k == real_model.KL_COEFS[0] else 0.0},
                                   "reward": {"diff_mean": 0.3}},
                   "policies": {"trained": {"kl_to_ref": 0.4}}})
    real_model.choose(tmp_path, [0, 1, 2])
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, (4, 16)).astype(float)
    bon = {"samples": 16, "ns": [1, 2, 4, 8, 16], "pools": {
        "val": summarize_pool(gold + rng.normal(0, 0.1, gold.shape), gold, EvalConfig(bootstrap_samples=200)),
        "ood": summarize_pool(rng.normal(0, 1, gold.shape), gold, EvalConfig(bootstrap_samples=200))}}
    for split in bon["pools"]:
        bon["pools"][split]["prompts"] = PROMPTS[split]
    write(tmp_path / real_model.REWARD_MODEL_OWNER / "seed_0" / "best_of_n.json", bon)
    (tmp_path / "data").mkdir()
    ifeval.write_prompts(tmp_path / "data" / ifeval.PROMPTS_FILE,
                         [ifeval.TaskPrompt(p, (t,), ({},)) for p, t in zip(PROMPTS["val"] + PROMPTS["ood"], TYPES)])

    data = collect(tmp_path)
    v = data["rl"]["verifier-reward"]["ID"]
    assert data["choice"]["chosen"] == real_model.KL_COEFS[0] and v["seeds"] == 3 and v["prompts"] == 4
    assert np.isclose(v["gain"], np.mean([np.mean(np.minimum(1, np.add(sft, d)) - sft) for d in (0.25, 0, 0.5)]))
    assert v["lo"] < v["gain"] < v["hi"], "the seeds differ: the interval has width"
    assert data["rl"]["reward-model"]["ID"]["gain"] == 0.0 == data["rl"]["reward-model"]["OOD"]["hi"]
    text = "\n".join(real_model_section(tmp_path, tmp_path))
    for name in ("verifier-reward strict gain", "reward-model strict gain", "best-of-16 RM-picked strict",
                 "best-of-16 verifier-picked strict"):
        assert re.search(rf"^{name}: {LINE}$", text, re.M), name
        assert re.search(rf"^OOD {name}: {LINE}$", text, re.M), name
    assert "| ID | `punctuation:no_comma` | 2 |" in text and "| OOD | `keywords:frequency` | 2 |" in text
    assert matplotlib.image.imread(tmp_path / "real_model.png").shape[0] > 100
    assert collect(tmp_path / "elsewhere") is None

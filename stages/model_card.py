"""Model cards: the text of the README.md that every model directory a run saves carries (sft_model/,
reward_model/, policy/, checkpoints/latest_policy/), built with huggingface_hub's ModelCard so that the hub shows
it and reads its metadata (base model, library, tags, data sets).

A card is built from a training record (`training_record`: what trained the model: its kind, the resolved config,
the command, its results), which stages/export.py keeps beside the weights as training_run.json, and, for the
policy once the eval stage has run, from eval.json (the held-out comparison with the SFT policy). So a card can be
rebuilt at any time without the run: the eval stage rebuilds the policy's with its figures, --push-to-hub with the
repository id in the usage code.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from common.config import Config, flatten, to_dict
from common.models import TINY, looks_local

PAPER = ("Ahmadian et al. 2024, *Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human "
         "Feedback in LLMs* ([arXiv:2402.14740](https://arxiv.org/abs/2402.14740))")
CITATION = """@article{ahmadian2024back,
  title={Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs},
  author={Ahmadian, Arash and Cremer, Chris and Gall{\\'e}, Matthias and Fadaee, Marzieh and Kreutzer, Julia and
          Pietquin, Olivier and {\\"U}st{\\"u}n, Ahmet and Hooker, Sara},
  journal={arXiv preprint arXiv:2402.14740},
  year={2024}
}"""
KINDS = ("sft", "reward", "policy", "checkpoint")
STAGE = {"sft": "sft", "reward": "rm", "policy": "rl", "checkpoint": "rl"}  # the stage that writes each kind
TITLES = {"sft": "Sandbox SFT policy", "reward": "Reward model for REINFORCE RLHF",
          "policy": "Policy aligned with REINFORCE (moving-average baseline)",
          "checkpoint": "Intermediate policy of a REINFORCE (moving-average baseline) run"}
TAGS = {"sft": ["sft", "rlhf-sandbox"], "reward": ["reward-model", "rlhf"], "policy": ["rlhf", "reinforce"],
        "checkpoint": ["rlhf", "reinforce", "checkpoint"]}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILE_SUFFIXES = (".gguf", ".csv", ".json", ".jsonl", ".parquet")  # a file named relative to a run, never a hub id
# the keys each kind's hyperparameter table shows (the full config follows in the card)
HYPERPARAMETERS = {
    "sft": ("sft.epochs", "sft.lr", "sft.batch_size", "model.tiny.hidden_size", "model.tiny.num_layers", "seed"),
    "reward": ("reward.head", "reward.num_bins", "reward.epochs", "reward.lr", "reward.batch_size",
               "reward.grad_accum", "reward.warmup_ratio", "reward.weight_decay", "data.max_length", "seed"),
    "policy": ("rl.steps", "rl.batch_size", "rl.lr", "rl.kl_coef", "rl.baseline", "rl.baseline_start", "rl.rloo_k",
               "rl.offpolicy_correction", "rl.tis_cap",
               "rl.max_grad_norm", "rl.weight_decay", "rl.reward_reduction", "rl.missing_eos_penalty",
               "generator.temperature", "generator.max_new_tokens", "reward.head", "seed"),
}
HYPERPARAMETERS["checkpoint"] = HYPERPARAMETERS["policy"]


def training_record(kind: str, cfg: Config, run_dir: str | Path, results: dict | None = None,
                    step: int | None = None, reward: dict | None = None) -> dict:
    """What trained a model, kept beside it (training_run.json): its kind, the resolved config, the run's command
    (invocation.json, when the run directory has one), the stage's results, for a checkpoint its step, and for a
    policy what its reward was made of (`reward`: actors/reward_functions.describe's reward_components)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    invocation = Path(run_dir) / "invocation.json"
    command = json.loads(invocation.read_text()) if invocation.is_file() else {}
    return {"kind": kind, "config": to_dict(cfg), "command": command.get("command"),
            "command_started": command.get("started"), "results": results or {}, "step": step, "reward": reward,
            "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def hub_id(name: str) -> str | None:
    """`name` when it is a hub repository id (org/name), else None (the sandbox's tiny model, a local path, a
    GGUF file): only a hub id may go into the card's metadata."""
    if not name or name == TINY or looks_local(name) or Path(name).exists() or Path(name).suffix in FILE_SUFFIXES:
        return None
    return name if HUB_ID.match(name) else None


def base_model(record: dict) -> str:
    """The model this one was trained from: the SFT policy, or for a reward model reward.init when set."""
    c = record["config"]
    if record["kind"] == "sft":
        return TINY
    return (c["reward"]["init"] or c["model"]["policy"]) if record["kind"] == "reward" else c["model"]["policy"]


def card_data(record: dict, adapter: bool) -> ModelCardData:
    kind, c = record["kind"], record["config"]
    dataset = hub_id(c["data"]["source"])
    tags = TAGS[kind] + (["lora", "peft"] if adapter else [])
    if kind == "reward":
        tags.append("bradley-terry" if c["reward"]["head"] == "scalar" else "distributional-reward-model")
    if kind in ("policy", "checkpoint") and c["reward"].get("functions"):
        tags.append("reward-functions")
    return ModelCardData(base_model=hub_id(base_model(record)), library_name="transformers", tags=tags,
                         datasets=[dataset] if dataset else None,
                         pipeline_tag="text-classification" if kind == "reward" else "text-generation")


def build_card(record: dict, evaluation: dict | None = None, model_id: str = ".", adapter: bool = False) -> ModelCard:
    """The card of a model directory: metadata, what it is, how to load it, how it was trained, its figures (the
    policy's held-out evaluation when there is one), the command, the full config, the citation."""
    kind = record["kind"]
    sections = [f"# {TITLES[kind]}", summary(record), usage(record, model_id, adapter), training(record),
                results(record, evaluation), reproduce(record),
                "## Citation\n\nThe method:\n\n```bibtex\n" + CITATION + "\n```"]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{card_data(record, adapter).to_yaml()}\n---\n\n{body}\n")


def describe_model(name: str, c: dict, warmed_up: bool = True) -> str:
    """The model `name` in words; the sandbox's tiny model is the sft stage's output unless `warmed_up` is False."""
    if name == TINY:
        t = c["model"]["tiny"]
        tiny = (f"a tiny randomly initialised Llama ({t['num_layers']} layers, hidden size {t['hidden_size']}, the "
                f"SmolLM2 tokenizer)")
        return f"the sandbox's SFT policy ({tiny} warmed up by the sft stage)" if warmed_up else tiny
    if hub_id(name):
        return f"[`{name}`](https://huggingface.co/{name})"
    return f"the de-quantised GGUF file `{name}`" if name.endswith(".gguf") else f"the local model `{name}`"


def describe_data(c: dict) -> str:
    source = c["data"]["source"]
    if source == "sandbox":
        return ("the offline sandbox task (requests to list words of a topic, generated preference pairs and "
                f"demonstrations, a programmatic gold judge; {c['sandbox']['num_pairs']} pairs)")
    if source == "ifeval":
        return ("prompts carrying IFEval instructions (this project's ifeval task): preference pairs sampled from the "
                "SFT policy and labelled by IFEval's verifiers")
    name = f"[`{source}`](https://huggingface.co/datasets/{source})" if hub_id(source) else f"`{source}`"
    return (f"{name} (split `{c['data']['split']}`), divided by prompt into train and validation "
            f"(data.val_fraction={c['data']['val_fraction']}, data.split_seed={c['data']['split_seed']})")


def describe_reward(c: dict, reduction: bool = True) -> str:
    """The reward model in words; `reduction`: how the rl stage turns a distributional head into a reward."""
    r = c["reward"]
    if r["head"] == "scalar":
        return "a scalar Bradley-Terry reward model (loss -log sigmoid(r_chosen - r_rejected))"
    how = f", reduced to a scalar reward by rl.reward_reduction={c['rl']['reward_reduction']}" if reduction else ""
    return f"a distributional reward model (p(score) over 1..{r['num_bins']}){how}"


def summary(record: dict) -> str:
    kind, c = record["kind"], record["config"]
    if kind == "sft":
        return (f"The offline sandbox's SFT policy: {describe_model(TINY, c, warmed_up=False)}, warmed up by "
                f"supervised learning on "
                f"{describe_data(c)}. It is the starting point and the KL reference of the RL stage.")
    if kind == "reward":
        what = describe_reward(c, reduction=False)
        return (f"{what[0].upper()}{what[1:]}, trained from "
                f"{describe_model(base_model(record), c)} on the preference pairs of {describe_data(c)}. The rl "
                f"stage optimises a policy against it.")
    what = (f"An intermediate checkpoint (step {record['step']} of {c['rl']['steps']}, not evaluated) of a policy"
            if kind == "checkpoint" else "A policy")
    return (f"{what} trained from {describe_model(base_model(record), c)} with REINFORCE with a moving-average "
            f"baseline and a KL penalty to the SFT policy, as in {PAPER}, against {policy_reward(record)}.")


def policy_reward(record: dict) -> str:
    """What the policy was trained against: the reward model, Python reward functions, or their weighted sum."""
    c = record["config"]
    parts = record.get("reward") or {"reward_model": 1.0, "functions": {}, "text": "reward model"}
    model = (f"{describe_reward(c)} read from `{c['reward']['path']}` (reward.path)" if c["reward"]["path"] else
             f"{describe_reward(c)} trained on the preference pairs of {describe_data(c)}")
    if not parts["functions"]:
        return model
    if not parts["reward_model"]:
        return f"Python reward functions alone ({parts['text']}) on the prompts of {describe_data(c)}"
    return f"the weighted sum {parts['text']}, the reward model being {model}"


def usage(record: dict, model_id: str, adapter: bool) -> str:
    c = record["config"]
    if record["kind"] == "reward":
        code = REWARD_USAGE.format(model_id=model_id)
        note = ("The score is read at the last token of the chat-templated conversation, as the rl stage reads it. "
                + ("It is the reward itself." if c["reward"]["head"] == "scalar" else
                   "The head gives logits over the scores 1..num_bins; softmax them for p(score). "
                   "`reward_head.json` names the head."))
    else:
        code = POLICY_USAGE.format(model_id=model_id, temperature=c["generator"]["temperature"],
                                   max_new_tokens=c["generator"]["max_new_tokens"])
        note = (f"The rl stage samples at temperature {c['generator']['temperature']} (generator.temperature, part "
                f"of the policy it trains), with no top-k or top-p.")
    if adapter:
        note += (f" The weights here are the full model with the LoRA adapter merged in; `adapter/` holds the adapter "
                 f"alone (peft): `PeftModel.from_pretrained(base, \"{model_id}\", subfolder=\"adapter\")` on the "
                 f"base model that its adapter_config.json names.")
    return f"## How to use\n\n```python\n{code}```\n\n{note}"


POLICY_USAGE = """from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{model_id}")
model = AutoModelForCausalLM.from_pretrained("{model_id}")
messages = [{{"role": "user", "content": "List three words about the sea."}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, do_sample=True, temperature={temperature}, max_new_tokens={max_new_tokens})
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""
REWARD_USAGE = """import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{model_id}")
model = AutoModelForSequenceClassification.from_pretrained("{model_id}").eval()
messages = [{{"role": "user", "content": "List three words about the sea."}},
            {{"role": "assistant", "content": "wave, tide, salt"}}]
text = tokenizer.apply_chat_template(messages, tokenize=False)
inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
with torch.no_grad():
    hidden = model.base_model(**inputs).last_hidden_state
    score = model.score(hidden[:, -1])  # [1, num_labels]
print(score)
"""


def training(record: dict) -> str:
    kind, c = record["kind"], record["config"]
    flat = flatten(c)
    keys = [k for k in HYPERPARAMETERS[kind] if not (k == "reward.num_bins" and c["reward"]["head"] == "scalar")]
    if kind in ("policy", "checkpoint") and c["reward"].get("functions"):
        keys += ["reward.model_weight", "reward.functions", "reward.function_weights"]
    lora = c["reward"]["lora"] if kind == "reward" else c["model"]["lora"]
    if lora["enabled"] and kind != "sft":
        prefix = "reward.lora" if kind == "reward" else "model.lora"
        keys += [f"{prefix}.{k}" for k in ("r", "alpha", "dropout", "target_modules")]
    table = "| key | value |\n|---|---|\n" + "\n".join(f"| `{k}` | `{flat[k]}` |" for k in keys)
    return f"## Training\n\n{method(record)}\n\n{table}"


def method(record: dict) -> str:
    kind, c = record["kind"], record["config"]
    if kind == "sft":
        return "Supervised fine-tuning: the mean negative log-likelihood of the demonstrations' response tokens."
    if kind == "reward":
        lora = " LoRA adapters trained, merged into the weights here." if c["reward"]["lora"]["enabled"] else ""
        return f"Pairwise training on chosen/rejected pairs: {describe_reward(c, reduction=False)}.{lora}"
    rl = c["rl"]
    baseline = ("the mean of the shaped rewards of all earlier steps (the paper's moving average)"
                if rl["baseline"] == "moving_average" else
                f"an exponential moving average (decay {rl['ema_decay']}; a deviation from the paper)")
    lora = (" LoRA adapters were trained; the reference is the policy with its adapters off."
            if c["model"]["lora"]["enabled"] else "")
    return (f"REINFORCE with a moving-average baseline ({PAPER}). Each step samples one response per prompt at "
            f"temperature {c['generator']['temperature']}; its reward r (above) is shaped as "
            f"R = r - beta (log pi - log pi_ref) with beta = rl.kl_coef = {rl['kl_coef']} and pi_ref the frozen "
            f"SFT policy; the baseline b is {baseline}; the loss is -(R - b) log pi(y|x), one optimizer step per "
            f"batch: no ratio, no clipping of the objective, no value network.{lora}")


def results(record: dict, evaluation: dict | None) -> str:
    out = []
    found = record.get("results") or {}
    if found:
        out.append("## Results at the end of training\n\n| figure | value |\n|---|---|\n"
                   + "\n".join(f"| {k} | {fmt(v)} |" for k, v in found.items()))
    if evaluation:
        out.append(evaluation_table(evaluation))
    return "\n\n".join(out)


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def evaluation_table(ev: dict) -> str:
    """The eval stage's held-out comparison (eval.json): paired differences from the SFT policy with their
    bootstrap intervals, in and out of distribution, and the KL to the SFT policy."""
    pct = int(round(100 * ev["confidence"]))
    pools = [("in-distribution", ev)] + ([("out-of-distribution", ev["ood"])] if "ood" in ev else [])
    gold = "gold" in ev["comparisons"]
    head = (f"| held-out prompts | n | reward diff vs SFT [{pct}% CI] |" + (f" gold diff vs SFT [{pct}% CI] |"
                                                                            if gold else "") + " KL to SFT |")
    rows = [head, "|---|---|---|" + ("---|" if gold else "") + "---|"]
    for name, pool in pools:
        cells = [name, str(pool["num_prompts"]), interval(pool["comparisons"]["reward"])]
        if gold:
            cells.append(interval(pool["comparisons"]["gold"]) if "gold" in pool["comparisons"] else "n/a")
        cells.append(f"{pool['policies']['trained']['kl_to_ref']:.3f}")
        rows.append("| " + " | ".join(cells) + " |")
    judge = (" The gold diff is the task's own judge (the sandbox's programmatic judge, or IFEval's verifiers), "
             "which the policy never trained on." if gold else "")
    return (f"## Evaluation\n\nThe eval stage's figures (eval.json): this policy and the SFT policy answered the same "
            f"held-out prompts with the same sampling seeds; differences are paired per prompt, with {pct}% "
            f"bootstrap intervals over prompts.{judge}\n\n" + "\n".join(rows))


def interval(comparison: dict) -> str:
    return (f"{comparison['diff_mean']:+.3f} [{comparison['diff_ci_low']:.3f}, "
            f"{comparison['diff_ci_high']:.3f}]")


def reproduce(record: dict) -> str:
    config = yaml.safe_dump(record["config"], sort_keys=False).rstrip()
    command = ""
    if record.get("command"):
        command = (f"The run directory's command (its invocation.json, written by its last `--stage all` or "
                   f"experiment command, started {record['command_started']}):\n\n```bash\n{record['command']}\n```"
                   f"\n\n")
    return (f"## Reproduce\n\nWritten by the {STAGE[record['kind']]} stage of this project on {record['written']}. "
            f"{command}The full resolved config:\n\n```yaml\n{config}\n```")

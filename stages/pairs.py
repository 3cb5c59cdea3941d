"""`--stage pairs` (data.source=ifeval): the real-model task's prompts and preference pairs, built once.

Prompts are composed from IFEval instruction types (common/ifeval_task.py); the SFT policy itself answers each
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
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.generator import build_generator
from common import ifeval_task
from common.config import Config, to_dict
from common.data import DataError, DataStats
from common.errors import UserError
from common.models import load_tokenizer, sft_policy_path
from common.runtime import amp, prepare
from common.splits import encode_prompts, load_splits, task_dir, write_data_report


def fingerprint(cfg: Config) -> dict:
    """Every setting the task's files depend on; a task directory built with others is not this task."""
    return {"ifeval": to_dict(cfg.ifeval) | {"dir": None}, "policy": cfg.model.policy,
            "split_seed": cfg.data.split_seed, "max_prompt_tokens": cfg.data.max_prompt_tokens,
            "overlong": cfg.data.overlong, "temperature": cfg.generator.temperature,
            "max_new_tokens": cfg.generator.max_new_tokens}


def existing_task(out: Path, cfg: Config) -> dict | None:
    """The task.json of a complete task built with these settings; None when there is none; UserError when one
    was built with other settings (rebuilding would change every run that already read it)."""
    path = out / ifeval_task.TASK_FILE
    if not path.is_file():
        return None
    task = json.loads(path.read_text())
    if task.get("fingerprint") != json.loads(json.dumps(fingerprint(cfg))):
        raise UserError(f"{out}: an ifeval task built with other settings is there ({path}); point ifeval.dir "
                        f"elsewhere, or remove that directory to rebuild it")
    return task


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@torch.no_grad()
def sample_answers(cfg: Config, prompt_tokens: list[list[int]], tokenizer, device: torch.device) -> tuple[list, dict]:
    """answers[i] = the SFT policy's samples_per_prompt answers to prompt i, and sampling counts."""
    generator = build_generator(cfg, sft_policy_path(cfg), tokenizer, prompt_tokens, device)
    n, bs, k = len(prompt_tokens), cfg.ifeval.batch_size, cfg.ifeval.samples_per_prompt
    answers: list[list[str]] = [[] for _ in range(n)]
    truncated = tokens = 0
    chunks = [(r, start) for r in range(k) for start in range(0, n, bs)]
    for c, (r, start) in enumerate(tqdm(chunks, desc="pairs: sampling", leave=False)):
        idx = list(range(start, min(n, start + bs)))
        with amp(cfg, device):  # seed: the chunk's place in the task, nothing else (reproducible, seed-free)
            batch = generator.generate(idx, cfg.data.split_seed * 1_000_003 + c)
        truncated += int((~batch.finished(tokenizer.eos_token_id)).sum())
        tokens += int(batch.response_mask.sum())
        for i, text in zip(idx, batch.response_texts):
            answers[i].append(text)
    return answers, {"truncated_answers": truncated, "response_tokens": tokens}


def sft_pass_rates(tasks: list[ifeval_task.TaskPrompt], answers: list[list[str]]) -> dict:
    """Per instruction type, the SFT samples' strict and loose prompt-level accuracy (what the pairs can teach)."""
    acc: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0])
    for task, texts in zip(tasks, answers):
        for text in texts:
            v = ifeval_task.verify(task, text)
            a = acc[",".join(task.instruction_id_list)]
            a[0], a[1], a[2] = a[0] + v.prompt_strict, a[1] + v.prompt_loose, a[2] + 1
    return {t: {"strict": s / n, "loose": lo / n, "answers": n} for t, (s, lo, n) in sorted(acc.items())}


def run_pairs(cfg: Config) -> dict:
    if cfg.data.source != "ifeval":
        raise UserError(f"--stage pairs builds the ifeval task; data.source is {cfg.data.source!r} (set "
                        f"data.source=ifeval, e.g. configs/smollm2_ifeval.yaml)")
    ifeval_task.require_packages()
    out, metrics_path = task_dir(cfg), Path(cfg.run_dir) / "pairs_metrics.json"
    device = prepare(cfg)
    task = existing_task(out, cfg)
    if task is not None:
        tqdm.write(f"pairs: the task at {out} exists (built with these settings): kept")
        result = {**task["counts"], "reused": str(out)}
        metrics_path.write_text(json.dumps(result, indent=2))
        return result
    t0 = time.perf_counter()
    tasks = ifeval_task.task_prompts(cfg.ifeval, cfg.data.split_seed)
    tokenizer = load_tokenizer(cfg, sft_policy_path(cfg))
    stats = DataStats()
    messages = [({"role": "user", "content": t.prompt},) for t in tasks]
    kept, prompt_tokens = encode_prompts(tokenizer, messages, cfg, stats)
    kept_text = {m[-1]["content"] for m in kept}
    tasks = [t for t in tasks if t.prompt in kept_text]  # too long for data.max_prompt_tokens (drop): left out
    answers, sampling = sample_answers(cfg, prompt_tokens, tokenizer, device)
    t_sample = time.perf_counter() - t0
    rows, counts = ifeval_task.preference_rows(tasks, answers)
    out.mkdir(parents=True, exist_ok=True)
    ifeval_task.write_prompts(out / ifeval_task.PROMPTS_FILE, tasks)
    write_atomic(out / ifeval_task.PAIRS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    counts.update(sampling, dropped_overlong=stats.dropped_overlong, sample_s=round(t_sample, 1),
                  seconds=round(time.perf_counter() - t0, 1), sft_pass_rates=sft_pass_rates(tasks, answers))
    counts["truncation_rate"] = sampling["truncated_answers"] / max(1, counts["answers"])
    write_atomic(out / ifeval_task.TASK_FILE, json.dumps({"fingerprint": fingerprint(cfg), "counts": counts},
                                                         indent=2))
    try:
        splits = load_splits(cfg)  # the written files read back through the normal data path
    except DataError as e:  # too few pairs to split: the files are of no use to any stage, so they go
        for name in (ifeval_task.TASK_FILE, ifeval_task.PAIRS_FILE, ifeval_task.PROMPTS_FILE):
            (out / name).unlink(missing_ok=True)
        raise DataError(f"{e}; the SFT answers tied on {counts['ties']} of {counts['prompts']} prompts: raise "
                        f"ifeval.num_prompts or ifeval.samples_per_prompt") from None
    counts["split"] = write_data_report(cfg.run_dir, "pairs", splits)
    metrics_path.write_text(json.dumps(counts, indent=2))
    tqdm.write(f"pairs: {counts['pairs']} pairs from {counts['prompts']} prompts ({counts['ties']} ties, rate "
               f"{counts['tie_rate']:.2f}) in {counts['seconds']:.0f}s, written to {out}")
    return counts

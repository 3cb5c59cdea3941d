"""`--stage rl`: REINFORCE against the reward (the reward model and/or reward.functions), KL-shaped towards the
frozen SFT policy; the ONE RL loop.

Local and Ray mode run this same loop; they differ only in their rollout source (actors/rollouts.py): in local
mode generator, scorer and learner run in this process in sequence (`InProcessRollouts`), in Ray mode generator
and scorer actors feed a queue (cluster/ray_rollouts.py). Each step (`rl_step`, which the benches time too):
take step t's scored batch from the source, one learner update, let the source react (Ray: publish the weights),
assemble the step's metrics; then log, show sample completions, probe held-out prompts and checkpoint
(`RLRecorder`). The progress bar shows reward, KL, length and EOS rate live.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from actors.heldout import HeldoutProbe
from actors.reward_functions import describe as describe_reward
from actors.rollouts import InProcessRollouts, RolloutSource
from common import checkpoint, ownership
from common.config import Config, offpolicy_correction
from common.errors import UserError
from common.files import write_text_atomic
from common.metrics import RunLogger, read_log
from common.models import apply_lora, frozen_copy, load_causal_lm, load_tokenizer
from common.paths import RunPaths
from common.rollout import RolloutBatch, eos_rate
from common.runtime import begin_outputs, prepare, record_config
from common.stats import overoptimisation_check
from learner.compile import compile_bucket, compile_seconds
from learner.learner import Learner
from learner.precision import precision_line, resolve_dtype
from stages.export import save_trained
from stages.model_card import training_record
from tasks.base import Task, last_user_text
from tasks.registry import load_task

# the last step's figures the policy's card shows (its training batch: the held-out ones come from the eval stage)
FINAL_FIGURES = {"rollout/reward": "last step's mean reward (training batch)", "rollout/kl": "last step's mean KL to "
                 "the SFT policy (training batch)"}
StepHook = Callable[[int, RolloutSource], None]  # after every step (tests use it to kill actors mid-run)


def build_policy(sft_path: str, lora, device: torch.device,
                 tokenizer=None) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The trainable policy (LoRA-wrapped when `lora.enabled`) and the frozen reference (None with LoRA);
    `tokenizer`, when given, is checked against the policy's vocabulary."""
    policy = load_causal_lm(sft_path, device, torch.float32, tokenizer)  # fp32 master weights; autocast on GPU
    reference = None if lora.enabled else frozen_copy(policy)
    return apply_lora(policy, lora, "CAUSAL_LM"), reference


def rl_step(learner: Learner, source: RolloutSource, step: int,
            eos_token_id: int) -> tuple[RolloutBatch, dict[str, float]]:
    """One step of the loop: step `step`'s batch from the source, one REINFORCE update, the source's after-update
    work; returns the scored batch and the step's metrics, its perf/ figures assembled here for every mode."""
    t0, compiling = time.perf_counter(), compile_seconds()
    batch, perf = source.next_batch(step, learner)
    t1 = time.perf_counter()
    metrics = learner.step(batch)
    eos = eos_rate(batch, eos_token_id)  # truncated = cut at max_new_tokens, scored as unfinished
    metrics.update({"rollout/eos_rate": eos, "rollout/truncation_rate": 1.0 - eos, "sync/version": learner.version})
    t2 = time.perf_counter()
    perf.update(source.after_update(step, learner))
    if compile_seconds() > compiling:  # model.compile: a new width compiled in this step (start-up, not speed)
        perf["perf/compile_s"] = compile_seconds() - compiling
    return batch, {**metrics, **perf_metrics(batch, perf, t1 - t0, t2 - t1, time.perf_counter() - t0)}


def perf_metrics(batch: RolloutBatch, perf: dict[str, float], t_batch: float, t_learn: float,
                 t_step: float) -> dict[str, float]:
    """The step's perf/ figures: the source's phases (generate, score, sync, ...), the loop's own (rollout_s: getting
    the batch, i.e. sync + generate + score in local mode, waiting on the queue in Ray mode; learner_s; step_s: the
    step's wall time) and the rates over that wall time."""
    tokens = float(batch.response_mask.sum())
    return {**perf, "perf/rollout_s": t_batch, "perf/learner_s": t_learn, "perf/step_s": t_step,
            "perf/samples_per_s": batch.batch_size / t_step, "perf/tokens_per_s": tokens / t_step,
            "perf/generate_tokens_per_s": tokens / max(perf.get("perf/generate_s", 0.0), 1e-9)}


def live_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows after each step: reward-model reward, KL to the reference, mean response length
    (tokens) and the share of responses that ended with EOS."""
    return {"reward": f"{metrics['rollout/reward']:.3f}", "kl": f"{metrics['rollout/kl']:.3f}",
            "len": f"{metrics['rollout/response_len']:.1f}", "eos": f"{metrics['rollout/eos_rate']:.0%}"}


def sample_rows(batch: RolloutBatch, prompts: list) -> list[dict]:
    """The best, median and worst response of the step's own scored batch by reward (nothing is generated for
    them, so training is unchanged), with its prompt and the task's per-sample scores (e.g. gold)."""
    rewards = batch.rewards.tolist()
    order = sorted(range(len(rewards)), key=rewards.__getitem__, reverse=True)
    picked = dict.fromkeys([order[0], order[len(order) // 2], order[-1]])  # fewer when the batch is smaller
    return [{"reward": rewards[i], **{k: float(v[i]) for k, v in batch.extras.items()},
             "prompt": last_user_text(prompts[int(batch.prompt_index[i])]), "response": batch.response_texts[i]}
            for i in picked]


def samples_text(step: int, rows: list[dict]) -> str:
    """The sample rows as a few short lines for the console: reward, prompt, response (the trackers' tables also
    hold the per-sample scores)."""
    def short(text: str) -> str:
        return textwrap.shorten(text, width=70, placeholder=" ...") or "(empty)"

    lines = [f"[rl step {step}] best, median and worst response of the batch by reward:"]
    lines += [f"  {row['reward']:+.3f} | {short(row['prompt'])} -> {short(row['response'])}" for row in rows]
    return "\n".join(lines)


class RLRecorder:
    """After each learner step: the metrics to the run's logger (jsonl and trackers), sample completions every
    rl.sample_every steps, the held-out probe (when rl.eval_every > 0) and periodic checkpoints: the learner's state
    (step_*.pt, for --resume) and the policy at that step as a Hugging Face directory (checkpoints/latest_policy/,
    for from_pretrained mid-run)."""

    def __init__(self, cfg: Config, paths: RunPaths, task: Task, start: int, learner: Learner, tokenizer,
                 prompts: list, run: dict) -> None:
        self.cfg, self.rl, self.paths, self.tokenizer, self.run = cfg, cfg.rl, paths, tokenizer, run
        self.ckpt_dir, self.start, self.prompts = paths.checkpoints, start, prompts
        self.logger = RunLogger(cfg, "rl", resume_step=start)
        self.probe = (HeldoutProbe(cfg, task, paths.scoring_reward_model, learner, tokenizer) if cfg.rl.eval_every
                      else None)
        if self.probe is not None and start == 0:
            self.logger.log(0, self.probe() | self.probe.rm_check)  # step 0: the SFT policy, and the reward model
            # on degenerate answers (actors/degenerate.py)

    def record(self, step: int, metrics: dict[str, float], learner: Learner, batch: RolloutBatch) -> None:
        rl = self.rl
        probe = self.probe is not None and ((step + 1) % rl.eval_every == 0 or step + 1 == rl.steps)
        if probe:
            metrics.update(self.probe())
        if probe or (step + 1) % rl.log_every == 0 or step + 1 == rl.steps:
            self.logger.log(step + 1, metrics)
        if rl.sample_every and (step == self.start or (step + 1) % rl.sample_every == 0):
            rows = sample_rows(batch, self.prompts)
            tqdm.write(samples_text(step + 1, rows))
            self.logger.samples(step + 1, rows)
        if rl.save_every and (step + 1) % rl.save_every == 0:
            self.checkpoint(step + 1, learner)

    def checkpoint(self, step: int, learner: Learner) -> None:
        """The learner's state (step_*.pt, for --resume) and the policy at this step as a Hugging Face directory
        (checkpoints/latest_policy/, replaced whole, for from_pretrained while the run goes on)."""
        save_checkpoint(self.ckpt_dir, step, learner, self.run)
        record = training_record("checkpoint", self.cfg, self.paths.run_dir, step=step,
                                 reward=describe_reward(self.cfg.reward))
        save_policy(learner, self.tokenizer, self.paths.latest_policy, record)

    def close(self) -> None:
        self.logger.close()


def save_checkpoint(ckpt_dir, step: int, learner: Learner, run: dict) -> None:
    """step_*.pt; a learner group (cluster/learner_group.py) writes its shards beside it first (step_*.dcp/)."""
    sharded = getattr(learner, "sharded", False)
    state = learner.save_checkpoint(ckpt_dir, step) if sharded else learner.state_dict()
    checkpoint.save(ckpt_dir, step, state, run=run)


def save_policy(learner: Learner, tokenizer, path, record: dict) -> None:
    """The policy as a Hugging Face directory (stages/export.save_trained); a learner group's rank 0 writes it."""
    if getattr(learner, "sharded", False):
        learner.save_policy(save_trained, path, record)
    else:
        save_trained(learner.policy, tokenizer, path, record)


@dataclass
class Resumed:
    """The checkpoint --resume continues from, the run it belongs to and the algorithm settings that change."""
    path: object
    state: dict
    run_id: str | None
    changes: dict[str, tuple]


def resume_checkpoint(cfg: Config, paths: RunPaths, allow_config_change: bool) -> Resumed:
    """The checkpoint `--resume` continues from, read before anything is written: an unreadable latest one is
    skipped for the previous, and rl.steps at or below its step is refused (a finished run is never rewritten,
    unless it stopped after its last checkpoint and before writing its results); so are a checkpoint of another run
    than the directory's and, without `allow_config_change`, changed algorithm settings (common/ownership.py)."""
    path, state = checkpoint.resume_state(paths.checkpoints, cfg.rl.steps,
                                          finished=paths.file("rl_metrics.json").is_file())
    run_id = ownership.check_checkpoint_owner(paths.run_dir, path, state)
    return Resumed(path, state, run_id, ownership.check_resume_config(cfg, path, state, allow_config_change))


def resume_learner(learner: Learner, resumed: Resumed) -> int:
    """Load a checkpoint (resume_checkpoint's) into the learner (weights, optimizer, baseline, RNG); returns
    its step."""
    state, sharded = resumed.state["learner"], getattr(learner, "sharded", False)
    if ("sharded" in state) != sharded:
        written = "a learner group (cluster.learner_ranks > 1)" if "sharded" in state else "one learner process"
        raise checkpoint.CheckpointError(f"--resume: {resumed.path} was written by {written}: resume it with the "
                                         f"cluster.learner_ranks it was written with")
    if sharded:
        learner.load_checkpoint(resumed.path.parent, state)
    else:
        learner.load_state_dict(state)
    checkpoint.set_rng_state(resumed.state["rng"])
    step = int(resumed.state["step"])
    changed = "".join(f", {k} {old!r} -> {new!r}" for k, (old, new) in resumed.changes.items())
    tqdm.write(f"resumed from {resumed.path} (step {step}{changed})")
    return step


def own_run(cfg: Config, resumed: Resumed | None, overwrite: bool) -> dict:
    """Once the inputs have loaded: a fresh run takes over the rl stage's files (ownership.claim), a resumed one
    records the config it continues with (and the changes it applies); both save config.yaml. Returns the run
    metadata every checkpoint carries."""
    if resumed is None:
        return ownership.run_meta(cfg, begin_outputs(cfg, "rl", overwrite))
    run_id = resumed.run_id or ownership.new_run_id()  # a checkpoint from before run ids: the run gets one now
    ownership.record_resume(cfg, run_id, int(resumed.state["step"]), resumed.changes)
    record_config(cfg)
    return ownership.run_meta(cfg, run_id)


def finish_rl(cfg: Config, paths: RunPaths, learner: Learner, tokenizer, metrics: dict[str, float], run: dict,
              **extra) -> dict:
    """Final checkpoint, the trained policy (policy/, with its card) and rl_metrics.json."""
    steps = cfg.rl.steps
    save_checkpoint(paths.checkpoints, steps, learner, run)
    rows = [json.loads(line) for line in read_log(paths.file("metrics_rl.jsonl"))]
    if not metrics:  # resumed at the last step (stopped before writing results): the last logged ones
        metrics = {k: v for k, v in rows[-1].items() if k != "step"}
    figures = {"steps": steps, **{label: metrics[key] for key, label in FINAL_FIGURES.items() if key in metrics}}
    save_policy(learner, tokenizer, paths.trained_policy,
                training_record("policy", cfg, paths.run_dir, figures, reward=describe_reward(cfg.reward)))
    result = {"steps": steps, "final": metrics, "overoptimisation": overoptimisation_check(rows), **extra}
    write_text_atomic(paths.file("rl_metrics.json"), json.dumps(result, indent=2))
    return result


def rollout_source(mode: str, cfg: Config, paths: RunPaths, task: Task, tokenizer, prompts, prompt_tokens,
                   policy, reference, device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The source of `--mode`: in-process (local), or the Ray actor pipeline (cluster/, imported only here)."""
    if mode == "ray":
        from cluster.ray_rollouts import RayRollouts
        return RayRollouts(cfg, paths.sft_policy, paths.scoring_reward_model, prompts, prompt_tokens, tokenizer)
    return contextlib.nullcontext(InProcessRollouts.build(cfg, paths, task, tokenizer, prompts, prompt_tokens,
                                                          policy, reference, device, dtype))


def run_rl(cfg: Config, resume: bool = False, mode: str = "local", on_step: StepHook | None = None,
           overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """The RL stage in either mode; returns what rl_metrics.json holds. `overwrite`: a fresh run replaces another
    run's rl files; `allow_config_change`: --resume applies changed algorithm settings (common/ownership.py)."""
    paths, task = RunPaths(cfg), load_task(cfg)
    group = cfg.cluster.learner_ranks > 1
    if group and mode != "ray":
        raise UserError(f"cluster.learner_ranks={cfg.cluster.learner_ranks} runs the learner as Ray actors: use "
                        f"--mode ray, or cluster.learner_ranks=1")
    device = prepare(cfg)  # the lock first: a second writer is told who holds the directory, whatever else is wrong
    # refused before anything is written: a resume that cannot continue, a fresh run over another run's files
    resumed = resume_checkpoint(cfg, paths, allow_config_change) if resume else None
    if not resume:
        ownership.check_fresh(cfg, "rl", overwrite)
    dtype = resolve_dtype(cfg.model.dtype, device)
    tqdm.write(precision_line(cfg.model.dtype, device, dtype))
    with contextlib.ExitStack() as stack:
        if mode == "ray":  # connect first: a wrong cluster address fails in seconds, before any model loads
            from cluster.ray_rollouts import ray_session
            stack.enter_context(ray_session(cfg.cluster))
        tokenizer = load_tokenizer(paths.sft_policy, cfg.model.tokenizer)
        # the reward model is checked after the data loads and before data_rl.json is written
        prompts, prompt_tokens = task.prompt_pool(tokenizer, "train", "rl", lambda: paths.scoring_reward_model)
        # a learner group's ranks load the policy themselves: the driver holds no copy
        policy, reference = (None, None) if group else build_policy(paths.sft_policy, cfg.model.lora, device,
                                                                    tokenizer)
        if group:  # placed before the rollout actors: with fractional GPUs each rank gets a GPU of its own
            from cluster.learner_group import LearnerGroup
            learner = stack.enter_context(LearnerGroup(cfg, paths.sft_policy))
        source = stack.enter_context(rollout_source(mode, cfg, paths, task, tokenizer, prompts, prompt_tokens,
                                                    policy, reference, device, dtype))
        correction = offpolicy_correction(cfg, mode)  # auto: tis only where generation runs ahead (Ray, staleness)
        if correction == "tis":
            tqdm.write(f"off-policy correction: truncated importance sampling, weights capped at rl.tis_cap="
                       f"{cfg.rl.tis_cap:g} (rl.offpolicy_correction={cfg.rl.offpolicy_correction}, "
                       f"cluster.max_staleness={cfg.cluster.max_staleness}; not in the paper)")
        if not group:
            learner = Learner(policy, reference, cfg.rl, device, dtype, correction, compile_bucket(cfg.model))
        start = resume_learner(learner, resumed) if resumed else 0
        run = own_run(cfg, resumed, overwrite)
        recorder = RLRecorder(cfg, paths, task, start, learner, tokenizer, prompts, run)
        source.start(start, learner)
        metrics: dict[str, float] = {}
        # the bar is closed (its line ended) on an error too, so that the error's line starts a line of its own
        with tqdm(initial=start, total=cfg.rl.steps, desc=f"rl ({mode})") as bar:
            for step in range(start, cfg.rl.steps):
                batch, metrics = rl_step(learner, source, step, tokenizer.eos_token_id)
                recorder.record(step, metrics, learner, batch)
                bar.set_postfix(live_postfix(metrics), refresh=False)
                bar.update()
                if on_step is not None:
                    on_step(step, source)
        recorder.close()
        summary = source.summary()
        warning = learner.update.skips.summary(learner.version)
        if warning:
            tqdm.write(warning, file=sys.stderr)
        # inside the session: a learner group's ranks write the last checkpoint and the policy
        return finish_rl(cfg, paths, learner, tokenizer, metrics, run, reward_components=describe_reward(cfg.reward),
                         **summary)

"""Level 2 experiment: scalar vs distributional reward model (each reduction) on the offline sandbox, several seeds.

    python cluster/level2_experiment.py --seeds 0 1 2 --out runs/level2 [--jobs 2] [key=value ...]
    python cluster/level2_experiment.py --config configs/smollm2_helpsteer2_distributional.yaml \
        --out runs/level2_helpsteer2 --seeds 0 1 2           # the same comparison on HelpSteer2 (GPU)

Per seed, what is shared is shared honestly: one SFT model, one scalar and one distributional reward model
(both trained from that SFT model on the same pairs), then one RL + eval run per variant, all with the same
hyperparameters (the config plus the given overrides). Every stage is a `launch.py` subprocess with its own
log; a finished stage (its output file exists) is skipped, so the script resumes where it stopped. At the end
(or with --summary-only) it writes <out>/summary.json and <out>/summary.md: per variant the gold and RM reward
differences vs the SFT policy and the KL, with 95% intervals over seeds (Student t) and over pooled
(seed, prompt) pairs (bootstrap), the distributional variants' gold gain over the scalar one on the same
prompts, and the reward models side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import load_config  # noqa: E402
from common.stats import paired_comparison, seed_summary  # noqa: E402

VARIANTS = {  # name -> (reward model, overrides)
    "scalar": ("rm_scalar", ["reward.head=scalar", "rl.reward_reduction=expected"]),
    "dist_expected": ("rm_distributional", ["reward.head=distributional", "rl.reward_reduction=expected"]),
    "dist_risk_averse": ("rm_distributional", ["reward.head=distributional", "rl.reward_reduction=risk_averse"]),
    "dist_win_prob_vs_ref": ("rm_distributional",
                             ["reward.head=distributional", "rl.reward_reduction=win_prob_vs_ref"]),
}
RMS = {"rm_scalar": ["reward.head=scalar"], "rm_distributional": ["reward.head=distributional"]}


@dataclass
class Job:
    name: str
    run_dir: Path
    stages: list[str]  # launch.py stages, in order
    overrides: list[str]
    done_file: str  # the job is finished when run_dir/done_file exists
    deps: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.run_dir / self.done_file).exists()


def plan(seeds: list[int], out: Path, variants: list[str], common: list[str], sandbox: bool) -> list[Job]:
    """Jobs in seed order, so that complete seeds accumulate first. In the sandbox each seed warms up its own
    tiny SFT policy; otherwise the configured model.policy is the SFT policy of every seed."""
    jobs = []
    for s in seeds:
        d = out / f"seed{s}"
        base = [f"seed={s}", *common]
        policy = [f"model.policy={d / 'sft' / 'sft_model'}"] if sandbox else []
        sft = [f"seed{s}/sft"] if sandbox else []
        if sandbox:
            jobs.append(Job(f"seed{s}/sft", d / "sft", ["sft"], base, "sft_metrics.json"))
        for rm, extra in RMS.items():
            if any(VARIANTS[v][0] == rm for v in variants):
                jobs.append(Job(f"seed{s}/{rm}", d / rm, ["rm"], [*base, *policy, *extra], "rm_metrics.json", sft))
        for v in variants:
            rm, extra = VARIANTS[v]
            jobs.append(Job(f"seed{s}/{v}", d / v, ["rl", "eval"],
                            [*base, *policy, f"reward.path={d / rm / 'reward_model'}", *extra],
                            "eval.json", [f"seed{s}/{rm}"]))
    return jobs


def start(job: Job, config: str, threads: int) -> subprocess.Popen:
    """Run the job's stages in one shell, skipping an rl stage whose policy is already saved."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    args = [f"run_dir={job.run_dir}", f"torch_threads={threads}", *job.overrides]
    cmds = []
    for stage in job.stages:
        cmd = shlex.join([sys.executable, "launch.py", "--config", config, "--stage", stage, *args])
        if stage == "rl":
            cmd = f"[ -f {shlex.quote(str(job.run_dir / 'rl_metrics.json'))} ] || {cmd}"
        cmds.append(cmd)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = (job.run_dir / "experiment.log").open("a")
    return subprocess.Popen(" && ".join(cmds), shell=True, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_all(jobs: list[Job], config: str, workers: int, threads: int) -> None:
    """Start ready jobs (dependencies finished) on up to `workers` processes; a failed job stops its dependants."""
    by_name = {j.name: j for j in jobs}
    pending = [j for j in jobs if not j.done]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: set[str] = set()
    while pending or running:
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                ok = proc.returncode == 0 and by_name[name].done
                failed |= set() if ok else {name}
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done' if ok else 'FAILED'} in "
                      f"{time.time() - t0:.0f}s", flush=True)
        for job in list(pending):
            if any(d in failed for d in job.deps):
                pending.remove(job)
                failed.add(job.name)
                print(f"{job.name}: skipped, a dependency failed", flush=True)
            elif len(running) < workers and all(by_name[d].done for d in job.deps if d in by_name):
                pending.remove(job)
                running[job.name] = (start(job, config, threads), time.time())
                print(f"[{time.strftime('%H:%M:%S')}] {job.name}: started", flush=True)
        time.sleep(2)
    if failed:
        print(f"failed: {sorted(failed)}; see <run_dir>/experiment.log", flush=True)


# ---------------------------------------------------------------------------------------------- summary


def _ci(values: list[float]) -> dict:
    s = seed_summary(values)
    return {"mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "per_seed": values}


def _pooled(treated: list[list[float]], control: list[list[float]]) -> dict:
    """Paired bootstrap over all (seed, prompt) items: prompt-level noise only, seeds taken as fixed."""
    c = paired_comparison(np.concatenate(treated), np.concatenate(control))
    return {"mean": c["diff_mean"], "ci_low": c["diff_ci_low"], "ci_high": c["diff_ci_high"], "n": c["n"]}


def summarize(out: Path, seeds: list[int], variants: list[str]) -> dict:
    evals = {v: {s: json.loads((out / f"seed{s}" / v / "eval.json").read_text()) for s in seeds
                 if (out / f"seed{s}" / v / "eval.json").is_file()} for v in variants}
    complete = [s for s in seeds if all(s in evals[v] for v in variants)]
    result = {"seeds": complete, "variants": {}, "vs_scalar": {}, "reward_models": {}}
    if not complete:
        return result
    for v in variants:
        pp = [evals[v][s]["per_prompt"] for s in complete]
        row = {}
        for key in ("gold", "reward", "win_prob_vs_sft"):
            t, c = [p["trained"][key] for p in pp], [p["sft"][key] for p in pp]
            row[key] = {"over_seeds": _ci([float(np.mean(a) - np.mean(b)) for a, b in zip(t, c)]),
                        "pooled": _pooled(t, c)}
        row["kl"] = {"over_seeds": _ci([float(np.mean(p["trained"]["kl_to_ref"])) for p in pp])}
        # the reward's spread over SFT answers: with one kl_coef for all variants, it sets the effective beta
        row["reward_scale"] = {"over_seeds": _ci([float(np.std(p["sft"]["reward"])) for p in pp])}
        row["rm_std"] = {"over_seeds": _ci([float(np.mean(p["trained"]["rm_std"])) for p in pp])} \
            if pp and "rm_std" in pp[0]["trained"] else None
        row["gold_trained"] = _ci([float(np.mean(p["trained"]["gold"])) for p in pp])
        row["gold_sft"] = _ci([float(np.mean(p["sft"]["gold"])) for p in pp])
        result["variants"][v] = row
        if v != "scalar" and "scalar" in variants:
            t = [p["trained"]["gold"] for p in pp]
            c = [evals["scalar"][s]["per_prompt"]["trained"]["gold"] for s in complete]
            result["vs_scalar"][v] = {"over_seeds": _ci([float(np.mean(a) - np.mean(b)) for a, b in zip(t, c)]),
                                      "pooled": _pooled(t, c)}
    for rm in RMS:
        files = [out / f"seed{s}" / rm / "rm_metrics.json" for s in complete]
        vals = [json.loads(f.read_text())["val"] for f in files if f.is_file()]
        if vals:
            result["reward_models"][rm] = {k: _ci([x[k] for x in vals]) for k in ("accuracy", "mean_p_win", "loss")}
            # q = P(chosen preferred): sigmoid(margin) for the scalar head, P_win + P_tie/2 for the distributional
            result["reward_models"][rm]["mean_q"] = _ci([x.get("mean_q", x["mean_p_win"]) for x in vals])
            result["reward_models"][rm]["ece"] = _ci([x["calibration"]["ece"] for x in vals])
            result["reward_models"][rm]["reliability"] = pooled_reliability([x["calibration"] for x in vals])
            if "mean_p_tie" in vals[0]:
                result["reward_models"][rm]["mean_p_tie"] = _ci([x["mean_p_tie"] for x in vals])
                for side in ("chosen", "rejected"):
                    result["reward_models"][rm][f"{side}_mean_distribution"] = np.mean(
                        [x[side]["mean_distribution"] for x in vals], 0).round(4).tolist()
    return result


def pooled_reliability(tables: list[dict]) -> list[dict]:
    """Reliability tables of several seeds merged bin by bin (count-weighted means)."""
    merged: dict[tuple, list[float]] = {}
    for t in tables:
        for b in t["bins"]:
            m = merged.setdefault(tuple(b["bin"]), [0, 0.0, 0.0])
            m[0] += b["count"]
            m[1] += b["count"] * b["mean_pred"]
            m[2] += b["count"] * b["observed"]
    return [{"bin": list(k), "count": n, "mean_pred": p / n, "observed": o / n}
            for k, (n, p, o) in sorted(merged.items())]


def _fmt(x: dict | None, sign: str = "+") -> str:
    if x is None:
        return "-"
    if np.isnan(x["ci_low"]):
        return f"{x['mean']:{sign}.3f}"
    return f"{x['mean']:{sign}.3f} [{x['ci_low']:{sign}.3f}, {x['ci_high']:{sign}.3f}]"


def format_summary(r: dict) -> str:
    n = len(r["seeds"])
    lines = [f"Seeds: {r['seeds']} (intervals: 95%; 'seeds' = Student t over the {n} per-seed means, "
             "'pooled' = paired bootstrap over all (seed, prompt) pairs)", "",
             "| variant | gold diff vs SFT (seeds) | gold diff (pooled) | RM reward diff vs SFT (seeds) | "
             "RM P(beats SFT) - 0.5 (seeds) | KL to ref (seeds) | RM reward std on SFT answers |",
             "|---|---|---|---|---|---|---|"]
    for v, row in r["variants"].items():
        lines.append(f"| {v} | {_fmt(row['gold']['over_seeds'])} | {_fmt(row['gold']['pooled'])} | "
                     f"{_fmt(row['reward']['over_seeds'])} | {_fmt(row['win_prob_vs_sft']['over_seeds'])} | "
                     f"{_fmt(row['kl']['over_seeds'])} | {_fmt(row['reward_scale']['over_seeds'])} |")
    if r["vs_scalar"]:
        lines += ["", "| variant | gold gain over the scalar RM's policy (seeds) | (pooled) |", "|---|---|---|"]
        lines += [f"| {v} | {_fmt(x['over_seeds'])} | {_fmt(x['pooled'])} |" for v, x in r["vs_scalar"].items()]
    if r["reward_models"]:
        lines += ["", "| reward model (val) | accuracy | mean q = P(chosen preferred) | ECE of q | loss | "
                  "mean P_win (strict) |", "|---|---|---|---|---|---|"]
        for rm, m in r["reward_models"].items():
            lines.append(f"| {rm} | {_fmt(m['accuracy'], '')} | {_fmt(m['mean_q'], '')} | {_fmt(m['ece'], '')} | "
                         f"{_fmt(m['loss'], '')} | {_fmt(m['mean_p_win'], '')} |")
        lines += ["", "Reliability of P(first response preferred), all seeds, each pair in both orders "
                  "(predicted -> observed, count):", ""]
        lines += ["| bin | " + " | ".join(r["reward_models"]) + " |", "|---|" + "---|" * len(r["reward_models"])]
        bins = sorted({tuple(b["bin"]) for m in r["reward_models"].values() for b in m["reliability"]})
        for k in bins:
            cells = []
            for m in r["reward_models"].values():
                b = next((b for b in m["reliability"] if tuple(b["bin"]) == k), None)
                cells.append("-" if b is None else f"{b['mean_pred']:.3f} -> {b['observed']:.3f} ({b['count']})")
            lines.append(f"| {k[0]:.1f}-{k[1]:.1f} | " + " | ".join(cells) + " |")
        for rm, m in r["reward_models"].items():
            if "chosen_mean_distribution" in m:
                lines += ["", f"{rm}: mean p(score) over scores 1..{len(m['chosen_mean_distribution'])}, chosen "
                          f"{m['chosen_mean_distribution']}, rejected {m['rejected_mean_distribution']}; mean P_tie "
                          f"{_fmt(m['mean_p_tie'], '')}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--out", default="runs/level2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="stages run in parallel (each with --threads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage (same for all variants)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        (out / "experiment.json").write_text(json.dumps(vars(args), indent=2))
        sandbox = load_config(args.config, args.overrides).model.policy == "tiny"
        run_all(plan(args.seeds, out, args.variants, args.overrides, sandbox), args.config, args.jobs, args.threads)
    result = summarize(out, args.seeds, args.variants)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    (out / "summary.md").write_text(format_summary(result) + "\n")
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

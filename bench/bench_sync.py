"""Time and peak memory of one weight sync of a LoRA policy (`Learner.policy_state`: the merged weights the generators
load) on a random model of the real SmolLM2-135M shape, on CPU, three ways:

    python bench/bench_sync.py [--config configs/smollm2_helpsteer2_lora.yaml] [--repeats 5] [--syncs 300]

- deep_copy: the sync as it was, `copy.deepcopy(policy).merge_and_unload()`;
- in_place: peft's `merge_adapter()`, a clone of each adapted weight, `unmerge_adapter()`;
- merged_state_dict: the sync (common/models.py): new tensors for the adapted weights only, nothing written.

Each way runs in a fresh process with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), so that freed tensors
go back to the system and one measurement's freed memory cannot hide the next one's. peak = the process's peak
resident memory during the first sync (VmHWM, reset through /proc/self/clear_refs) minus its resident memory just
before; time = the median of --repeats further syncs, each result dropped before the next. Also printed: the
largest difference of the synced weights from deep_copy's, and how far the frozen base weights (the reference)
have moved after 1 and after --syncs syncs. The adapters' B matrices are drawn from N(0, --b-std) (trained
adapters; peft starts them at 0).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_memory import REAL_SHAPE, model_config  # noqa: E402
from common.config import load_config  # noqa: E402
from common.models import apply_lora, merged_state_dict  # noqa: E402

WAYS = ("deep_copy", "in_place", "merged_state_dict")
MIB = 2 ** 20


def deep_copy(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in copy.deepcopy(policy).merge_and_unload().state_dict().items()}


def in_place(policy) -> dict[str, torch.Tensor]:
    policy.merge_adapter()
    merged = {k.replace(".base_layer.", "."): v.detach().clone() if ".base_layer." in k else v.detach()
              for k, v in policy.get_base_model().state_dict().items() if ".lora_" not in k}
    policy.unmerge_adapter()
    return merged


SYNC = {"deep_copy": deep_copy, "in_place": in_place, "merged_state_dict": merged_state_dict}


def status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def lora_policy(config: str, b_std: float, seed: int = 0):
    cfg = load_config(config)
    torch.manual_seed(seed)
    policy = apply_lora(LlamaForCausalLM(model_config(REAL_SHAPE)).eval(), cfg.model.lora, "CAUSAL_LM")
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    return policy


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in b)


def moved_share(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The share of b's elements whose value differs in a."""
    return sum(int((a[k] != b[k]).sum()) for k in b) / sum(v.numel() for v in b.values())


def measure(way: str, args) -> dict:
    """One way, in this process: peak and time of a sync, its values against deep_copy's, the base's drift."""
    policy = lora_policy(args.config, args.b_std)
    base = {k: v.clone() for k, v in policy.state_dict().items() if ".base_layer." in k}
    pristine = copy.deepcopy(policy)  # held: no free before the measurement
    gc.collect()
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident memory
    state = SYNC[way](policy)
    peak_mib = (status_kib("VmHWM") - before) / 1024
    drift_1 = max_diff(policy.state_dict(), base)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        SYNC[way](policy)
        times.append(time.perf_counter() - t0)
    for _ in range(max(args.syncs - 1 - args.repeats, 0)) if way == "in_place" else ():
        SYNC[way](policy)
    drift_n, moved_n = max_diff(policy.state_dict(), base), moved_share(policy.state_dict(), base)
    live = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    new = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in state.values()}  # tied: once
    held_mib = sum(n for ptr, n in new.items() if ptr not in live) / MIB
    return {"way": way, "peak_mib": peak_mib, "held_mib": held_mib, "median_s": statistics.median(times),
            "vs_deep_copy": max_diff(state, deep_copy(pristine)), "base_drift_1": drift_1,
            "base_drift_n": drift_n, "base_moved_n": moved_n,
            "syncs": args.syncs if way == "in_place" else 1 + args.repeats,
            "trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in policy.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2_helpsteer2_lora.yaml", help="its model.lora is used")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--syncs", type=int, default=300, help="in_place: syncs before the base drift is read")
    parser.add_argument("--b-std", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default (slower where "
                                                                "other jobs share the cores)")
    parser.add_argument("--way", choices=WAYS, help="measure one way in this process (what the parent runs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.way:
        print(json.dumps(measure(args.way, args)))
        return 0
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows = []
    for way in WAYS:
        out = subprocess.run([sys.executable, __file__, "--way", way, *(argv if argv is not None else sys.argv[1:])],
                             env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    r = rows[0]
    print(f"SmolLM2-135M shape, random weights, LoRA {load_config(args.config).model.lora}; trainable "
          f"{r['trainable'] / 1e6:.2f}M of {r['params'] / 1e6:.1f}M parameters; {torch.get_num_threads()} threads")
    print("| way | peak MiB | held MiB | median s | max diff from deep_copy | base moved after 1 sync (max) "
          "| after N syncs: max, share of adapted base elements |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['way']} | {r['peak_mib']:.0f} | {r['held_mib']:.0f} | {r['median_s']:.3f} | "
              f"{r['vs_deep_copy']:.3g} | {r['base_drift_1']:.3g} | {r['base_drift_n']:.3g}, "
              f"{100 * r['base_moved_n']:.1f}% (N = {r['syncs']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

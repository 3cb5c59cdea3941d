#!/usr/bin/env bash
# The GPU check of the real run (bench/gpu_check.py): reward-model and REINFORCE steps of both real configs at
# their real sizes, SmolLM2-135M's shape with random weights, hf backend, GPU memory capped at 16 GiB, in fp16
# and in bf16; then the throughput check (bench/gpu_throughput.py: 256 prompts x up to 256 new tokens, EOS allowed:
# the RL step's tokens/s over generation alone's, the sync's share of the step, the learner's MFU), with vLLM where
# it is installed, else hf. Needs one NVIDIA GPU and only torch, transformers, peft and tensorboard (no hub, no
# ray; vLLM optional). Takes a few minutes; prints a table of peak memory and seconds per step, then the ratios.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # from the checkout; default OUT_DIR: runs/gpu_check
#
# Exit status: 0 all fit; 2 something ran out of the 16 GiB (the table says which); 1 the check itself failed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  || { echo "gpu_check: nvidia-smi failed: no NVIDIA GPU here" >&2; exit 1; }
"$PY" -c "import torch, transformers, peft, tensorboard, yaml, tqdm, numpy" \
  || { echo "gpu_check: needs torch, transformers, peft and tensorboard installed" >&2; exit 1; }

export TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
status=0
for config in smollm2_helpsteer2 smollm2_helpsteer2_distributional; do
  for dtype in float16 bfloat16; do
    name="${config}_${dtype}"
    echo "== $name"
    set +e
    "$PY" bench/gpu_check.py --config "configs/$config.yaml" --dtype "$dtype" --work-dir "$OUT/$name" \
      > "$OUT/$name.log" 2>&1
    rc=$?
    set -e
    grep '^gpu_check: ' "$OUT/$name.log" || true
    if [ "$rc" = 3 ]; then
      status=2
    elif [ "$rc" != 0 ]; then
      echo "gpu_check: $name FAILED (exit $rc); the end of $OUT/$name.log:" >&2
      tail -n 30 "$OUT/$name.log" >&2
      exit 1
    fi
  done
done

# one table from the JSON lines
grep -h '^gpu_check: {' "$OUT"/*.log | sed 's/^gpu_check: //' > "$OUT/results.jsonl"
"$PY" - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| config | dtype | stage | peak allocated GiB | peak reserved GiB | s/step | response len |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if r["fits"]:
        print(f"| {r['config']} | {r['dtype']} | {r['stage']} | {r['peak_allocated_gib']} | "
              f"{r['peak_reserved_gib']} | {r['s_per_step']} | {r.get('response_len', '')} |")
    else:
        print(f"| {r['config']} | {r['dtype']} | {r['stage']} | OUT OF MEMORY at 16 GiB | | | |")
EOF
[ "$status" = 0 ] && echo "gpu_check: everything fits 16 GiB" || echo "gpu_check: something does NOT fit 16 GiB"

echo "== throughput"
dtype=$("$PY" -c "import torch; print('bfloat16' if torch.cuda.is_bf16_supported() else 'float16')")
TQDM_DISABLE=1 "$PY" bench/gpu_throughput.py --dtype "$dtype" --json "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1 \
  || { echo "gpu_check: the throughput check FAILED; the end of $OUT/throughput.log:" >&2; tail -n 30 "$OUT/throughput.log" >&2; exit 1; }
grep -A3 '^gpu_throughput: [^{]' "$OUT/throughput.log"
exit "$status"

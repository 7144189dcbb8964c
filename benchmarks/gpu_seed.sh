#!/usr/bin/env bash
# The seed-recipe throughput benchmark on one CUDA GPU, then where an update's time goes. 40 updates each of GPT-2
# small (8 x 1024 tokens, update-freq 8) on Fairseq's dummy data, a log line every 10 updates as in the seed
# recipe: stock Fairseq --fp16, the plugin's fast path (compiled, with CUDA graphs, and not compiled) and the
# plain-PyTorch reference (the same model in a bare loop, reference_gpt2.py); tokens/s over the last 30, MFU,
# peak memory, each over stock --fp16, speedup= and fast_over_reference=. Then, if at least 150 s of the 10
# minutes are left, profile_fast_path.py on the fast path: device time per update, and the device's idle gaps by
# what the host was doing. Each configuration may take at most 110 s, so the benchmark stays under 10 minutes
# even if every one hangs; about 5 to 6 minutes on an H200 (torch.compile's warm-up included).
#
# For a GPU machine without Fairseq (Python 3.12, torch 2.11): build .gpu/ and .whl/ first with
# shared/tools/gpu-bundle.sh from the repository root, carry both, and run from the repository root:
#   bash benchmarks/gpu_seed.sh [train_throughput.py options, e.g. --fast-flags '' or --configs stock-fp16]
# It writes $OUT/cuda-<date>.json, $OUT/train_throughput.log (what it prints), $OUT/logs/<config>.log and
# $OUT/cuda-<date>-profile.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/train-throughput}
mkdir -p "$out/logs"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/.gpu:/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/nvidia-smi.csv" || true
day=$(date +%F)
status=0
python3 benchmarks/train_throughput.py --device cuda --preset seed --config-timeout 110 \
    --out "$out/cuda-$day.json" --log-dir "$out/logs" "$@" 2>&1 | tee "$out/train_throughput.log" || status=$?
left=$((590 - SECONDS))
if [ "$left" -ge 150 ]; then
  timeout "$left" python3 benchmarks/profile_fast_path.py --device cuda --preset seed \
      > "$out/cuda-$day-profile.txt" 2>&1 || echo "profile: exit status $?" | tee -a "$out/cuda-$day-profile.txt"
  grep -A12 "^device timeline" "$out/cuda-$day-profile.txt" || true
else
  echo "profile: skipped, ${left}s left"
fi
exit $status

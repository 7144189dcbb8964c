#!/usr/bin/env bash
# The seed-recipe throughput benchmark on one CUDA GPU: stock Fairseq --fp16, stock --fp16
# --checkpoint-activations (the recipe as written) and the plugin's fast path (compiled, with CUDA graphs, and
# not compiled), 40 updates each of GPT-2 small (8 x 1024 tokens, update-freq 8) on Fairseq's dummy data, a log
# line every 10 updates as in the seed recipe (the H200 numbers of 2026-11-28 logged every update);
# tokens/s over the last 30, MFU, peak memory, each over stock --fp16, and speedup=. About 5 minutes on an H200
# (torch.compile's warm-up included); each configuration may take at most 115 s, so the whole run stays under
# 10 minutes even if every one hangs.
#
# For a GPU machine without Fairseq (Python 3.12, torch 2.11): build .gpu/ and .whl/ first with
# shared/tools/gpu-bundle.sh from the repository root, carry both, and run from the repository root:
#   bash benchmarks/gpu_seed.sh [train_throughput.py options, e.g. --fast-flags '' or --configs stock-fp16]
# It writes $OUT/cuda-<date>.json, $OUT/train_throughput.log (what it prints) and $OUT/logs/<config>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/train-throughput}
mkdir -p "$out/logs"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/.gpu:/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/nvidia-smi.csv" || true
python3 benchmarks/train_throughput.py --device cuda --preset seed --config-timeout 115 \
    --out "$out/cuda-$(date +%F).json" --log-dir "$out/logs" "$@" 2>&1 | tee "$out/train_throughput.log"

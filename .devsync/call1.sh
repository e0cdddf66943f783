#!/bin/bash
# session 11, call 1: splitk tests, b64 profile (eager + graph timeline), gemm sweep, split-K A/B
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
t0=$(date +%s)
timeout 150 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py -k "splitk or split_k or linear or decode_step" 2>&1 | tail -12
echo "== tests done $(( $(date +%s)-t0 ))s"
timeout 120 python3 bench/local_model_gpu.py --profile --batches 64 2>&1 | tail -60
echo "== profile done $(( $(date +%s)-t0 ))s"
timeout 230 python3 bench/kernels_gpu.py --gemm-sweep --json $OUT/gemm.json 2>&1 | tail -45
echo "== sweep done $(( $(date +%s)-t0 ))s"
left=$(( 585 - ($(date +%s)-t0) ))
timeout $left python3 bench/local_model_gpu.py --splitk-ab --splitk $OUT/gemm.json --batches 64,16 --json $OUT/splitk_ab.json 2>&1 | tail -40
echo "== ab done $(( $(date +%s)-t0 ))s"

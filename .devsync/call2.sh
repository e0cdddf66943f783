#!/bin/bash
# session 11, call 2: PDL + L2 prefetch on the split-K GEMM: tests, a projection chain, the b64 step; long-context decode
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 150 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py -k "splitk or split_k or linear or decode_step" 2>&1 | tail -5
echo "== tests done $(( $(date +%s)-t0 ))s"
timeout 120 python3 bench/kernels_gpu.py --pdl --json $OUT/pdl.json 2>&1 | tail -8
echo "== pdl chain done $(( $(date +%s)-t0 ))s"
timeout 150 python3 bench/local_model_gpu.py --splitk-ab --splitk all:bench/results_gemm_h100.json --modes cublas-nopdl,cublas,splitk-nopdl,splitk --batches 64,1 --greedy-steps 32 --json $OUT/ab_all.json 2>&1 | grep -v "^  [0-9]" | tail -14
echo "== ab done $(( $(date +%s)-t0 ))s"
left=$(( 590 - ($(date +%s)-t0) ))
timeout $left python3 bench/long_context_gpu.py --lengths 16384,131072,262144 --new 64 --json $OUT/long.json 2>&1 | grep -v "^ " | tail -14
echo "== long done $(( $(date +%s)-t0 ))s"

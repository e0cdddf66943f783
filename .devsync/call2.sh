#!/bin/bash
# session 11, call 2: PDL + prefetch (split-K chain), the MoE sweep, the b64 step with/without PDL
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 170 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py tests/local_model/test_model_runner.py -k "splitk or split_k or linear or decode_step or moe or router or rms or greedy or attention_decode or model_runner or runner" 2>&1 | tail -6
echo "== tests done $(( $(date +%s)-t0 ))s"
timeout 100 python3 bench/kernels_gpu.py --pdl --json $OUT/pdl.json 2>&1 | tail -4
echo "== pdl chain done $(( $(date +%s)-t0 ))s"
timeout 210 python3 bench/kernels_gpu.py --moe-sweep --json $OUT/moe_sweep.json 2>&1 | tail -40
echo "== moe sweep done $(( $(date +%s)-t0 ))s"
left=$(( 590 - ($(date +%s)-t0) ))
timeout $left python3 bench/local_model_gpu.py --splitk-ab --splitk all:bench/results_gemm_h100.json --modes cublas-nopdl,cublas,splitk-nopdl,splitk --batches 64,1 --greedy-steps 32 --json $OUT/ab_all.json 2>&1 | grep -v "^  [0-9]" | tail -16
echo "== ab done $(( $(date +%s)-t0 ))s"

#!/bin/bash
# session 11, call 2: tests on the card; PDL chain; Mamba sublayer; MoE sweep
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 200 python3 -m pytest --noconftest -q -x tests/local_model/test_kernels_triton.py tests/local_model/test_model_runner.py tests/local_model/engine/test_mamba2_decode_step.py 2>&1 | tail -8
echo "== tests done $(( $(date +%s)-t0 ))s"
timeout 90 python3 bench/kernels_gpu.py --pdl --json $OUT/pdl.json 2>&1 | tail -3
echo "== pdl chain done $(( $(date +%s)-t0 ))s"
timeout 130 python3 bench/kernels_gpu.py --mamba-step --json $OUT/mamba_step.json 2>&1 | tail -30
echo "== mamba step done $(( $(date +%s)-t0 ))s"
left=$(( 590 - ($(date +%s)-t0) ))
timeout $left python3 bench/kernels_gpu.py --moe-sweep --json $OUT/moe_sweep.json 2>&1 | tail -40
echo "== moe sweep done $(( $(date +%s)-t0 ))s"

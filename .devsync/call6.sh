#!/bin/bash
# session 12, call 4: in_proj conv epilogue with the window loaded before the K loop
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 120 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py -k "in_proj or negative_slot or sublayer or every_projection or decode_step or splitk or split_k" > $OUT/tests.txt 2>&1
echo "== tests rc=$? $(( $(date +%s)-t0 ))s"; tail -1 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head
timeout 90 python3 bench/local_model_gpu.py --splitk-ab --modes default,default-nopdl --batches 64,1 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "== ab rc=$? $(( $(date +%s)-t0 ))s"; grep "_tok_s" $OUT/ab.txt | head -2; grep -A3 greedy $OUT/ab.txt | tr -d ' \n' | cut -c1-300; echo
timeout 60 python3 bench/local_model_gpu.py --profile --batches 64 > $OUT/profile.txt 2>&1
echo "== profile rc=$? $(( $(date +%s)-t0 ))s"; grep -E "^\s+_(splitk|moe_gemm|mamba|rms|conv)" $OUT/profile.txt | awk '{print $1, $(NF-1), $NF}'; tail -1 $OUT/profile.txt | cut -c1-200

#!/bin/bash
# session 12, call 1: tests on the card (to a file), acceptance 3 end to end (426M b64/b1 vs HF, prefill 8K, 1.5B b1), b64 profile
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
t0=$(date +%s)
timeout 170 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py tests/local_model/test_model_runner.py tests/local_model/engine/test_mamba2_decode_step.py > $OUT/tests.txt 2>&1
echo "== tests rc=$? $(( $(date +%s)-t0 ))s"; tail -3 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head -20
timeout 300 python3 bench/local_model_gpu.py --big --batches 64,1 --json $OUT/model.json > $OUT/model.txt 2>&1
echo "== model rc=$? $(( $(date +%s)-t0 ))s"; tail -45 $OUT/model.txt
left=$(( 590 - ($(date +%s)-t0) ))
timeout $left python3 bench/local_model_gpu.py --profile --batches 64 > $OUT/profile.txt 2>&1
echo "== profile rc=$? $(( $(date +%s)-t0 ))s"; tail -40 $OUT/profile.txt

#!/bin/bash
# session 12, call 3: after removing the measured-slower options and gating the SSM step's PDL by rows:
# tests on the card, acceptance 3 end to end, PDL A/B at 64/16/1 rows (426M) and batch 1 (1.5B), b64 profile
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$(date +%s)
timeout 170 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py tests/local_model/test_model_runner.py tests/local_model/engine/test_mamba2_decode_step.py > $OUT/tests.txt 2>&1
echo "== tests rc=$? $(( $(date +%s)-t0 ))s"; tail -2 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head -20
timeout 150 python3 bench/local_model_gpu.py --big --batches 64,1 --json $OUT/model.json > $OUT/model.txt 2>&1
echo "== model rc=$? $(( $(date +%s)-t0 ))s"; python3 -c "
import json;d=json.load(open('$OUT/model.json'));print({k:v for k,v in d.items() if not isinstance(v,dict)});print(d.get('big'))"
timeout 100 python3 bench/local_model_gpu.py --splitk-ab --modes default,default-nopdl --batches 64,16,1 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "== ab rc=$? $(( $(date +%s)-t0 ))s"; grep "_tok_s" $OUT/ab.txt | head -3
timeout 80 python3 bench/local_model_gpu.py --splitk-ab --big --modes default,default-nopdl --batches 1 --json $OUT/ab_big.json > $OUT/ab_big.txt 2>&1
echo "== ab big rc=$? $(( $(date +%s)-t0 ))s"; grep "_tok_s" $OUT/ab_big.txt | head -2
left=$(( 570 - ($(date +%s)-t0) ))
timeout $left python3 bench/local_model_gpu.py --profile --batches 64 > $OUT/profile.txt 2>&1
echo "== profile rc=$? $(( $(date +%s)-t0 ))s"; tail -1 $OUT/profile.txt | cut -c1-400

#!/bin/bash
# session 12, call 5: the final tree (cleanup + SSM PDL by rows; conv epilogue reverted): tests, acceptance 3, profile
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 200 python3 -m pytest --noconftest -q tests/local_model/test_kernels_triton.py tests/local_model/test_model_runner.py tests/local_model/engine/test_mamba2_decode_step.py > $OUT/tests.txt 2>&1
echo "== tests rc=$? $(( $(date +%s)-t0 ))s"; tail -1 $OUT/tests.txt; grep -E "^(FAILED|ERROR)" $OUT/tests.txt | head
timeout 150 python3 bench/local_model_gpu.py --big --batches 64,1 --json $OUT/model.json > $OUT/model.txt 2>&1
echo "== model rc=$? $(( $(date +%s)-t0 ))s"; python3 -c "
import json;d=json.load(open('$OUT/model.json'));print({k:v for k,v in d.items() if not isinstance(v,dict)});print(d.get('big'))"
timeout 60 python3 bench/local_model_gpu.py --profile --batches 64 > $OUT/profile.txt 2>&1
echo "== profile rc=$? $(( $(date +%s)-t0 ))s"; grep -E "^\s+_" $OUT/profile.txt | awk '{print $1, $(NF-1), $NF}'; tail -1 $OUT/profile.txt | cut -c1-160

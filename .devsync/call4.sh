#!/bin/bash
# session 12, call 2: side-stream L2 prefetch tests + A/B at b64/b1 (426M), PDL off/on, long context decode
export PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 90 python3 -m pytest --noconftest -q tests/local_model/test_decode_prefetch.py > $OUT/tests.txt 2>&1
echo "== tests rc=$? $(( $(date +%s)-t0 ))s"; tail -3 $OUT/tests.txt; grep -E "^(FAILED|ERROR)|Error" $OUT/tests.txt | head -20
timeout 260 python3 bench/local_model_gpu.py --splitk-ab --modes default,default+pf16,default+pf32,default+pf16_normal,default+pf8,default+pf16_ffn,default+pf16_mixer,default-nopdl --batches 64,1 --json $OUT/ab.json > $OUT/ab.txt 2>&1
echo "== ab rc=$? $(( $(date +%s)-t0 ))s"; grep -v "^ " $OUT/ab.txt | tail -8; grep greedy $OUT/ab.txt | tail -4
left=$(( 560 - ($(date +%s)-t0) ))
timeout $left python3 bench/long_context_gpu.py --lengths 16384,131072,262144 --new 64 --json $OUT/long.json > $OUT/long.txt 2>&1
echo "== long rc=$? $(( $(date +%s)-t0 ))s"; tail -30 $OUT/long.txt

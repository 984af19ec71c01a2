#!/usr/bin/env bash
# Issue 16's GPU checks, for a session lent a GPU (see /work/.library/device), in two calls of under ten minutes:
#   bash benchmarks/gpu_check.sh               part 1 (logs under $OUT, else /tmp/gpu_check: 4 files)
#   bash benchmarks/gpu_check.sh 2 S O B W     part 2, with part 1's choices (its last line in sync.txt says them):
#                                              sync_every S, overlap O (on|off), B rows and W warps a program (2 files)
# Part 1, what the goal needs, most important first:
# 1. the CUDA tests of static decode (graphs captured and replayed, one a round; the host loop's copies);
# 2. on training problems (engine alone, bfloat16): the Triton step's rows and warps a program (tiny/step_kernel.py;
#    16/4, 32/4, 32/8, 64/8; the torch path if none runs), then whether a round is queued before the last one is
#    read (--overlap), then sync_every (4, 8 or 16);
# 3. benchmarks/sampling.py on the test problems with those choices, bfloat16 (the issue's goal), transformers'
#    static cache tried too and the exact loop compared: with the Triton step (bf16_step.log) and the torch path's
#    step (bf16.log).
# Part 2: the Triton tests on the GPU; benchmarks/profile_engine.py on both steps (where a call's time goes);
# float32; a fresh draw (--problem-seed 1); the torch path's attention chunk by chunk and as the Triton kernel;
# benchmarks/attention_products.py.
# Each log is written as it runs, and each run has its own time limit: a run cut short leaves what it printed.
# The machine's python3 and packages are used as they are: thinkscale runs from src/.
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
quiet() { grep -v '^Loading\|USDT\|_warn_once\|acc_events'; }
# tokens/s of an engine-only run on training problems (empty where it failed)
rate_of() {
    timeout 150 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --split train --engine-only "$@" 2>&1 \
        | grep 'tokens/s$' | tail -1 | sed 's/.*= \([0-9,]*\) tokens\/s$/\1/' | tr -d ,
}

if [ "${1:-1}" = 2 ]; then
    if [ $# -ne 5 ]; then echo "usage: bash benchmarks/gpu_check.sh 2 SYNC_EVERY on|off BLOCK WARPS" >&2; exit 2; fi
    set_=(--sync-every "$2" --overlap "$3")
    step=(--triton-step --triton-block "$4" --triton-warps "$5")
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m triton tests/test_attention_kernel.py \
        tests/test_step_kernel.py 2>&1 | tail -8 | tee "$out/profile.log"
    timeout 120 python3 benchmarks/profile_engine.py --device cuda --dtype bfloat16 "${set_[@]}" \
        ${step[@]+"${step[@]}"} 2>&1 | quiet | tee -a "$out/profile.log"
    timeout 120 python3 benchmarks/profile_engine.py --device cuda --dtype bfloat16 "${set_[@]}" 2>&1 \
        | quiet | tee -a "$out/profile.log"
    timeout 150 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 "${set_[@]}" ${step[@]+"${step[@]}"} \
        --problem-seed 1 --transformers-static-cache 2>&1 | quiet | tee "$out/more.log"
    timeout 150 python3 benchmarks/sampling.py --device cuda "${set_[@]}" --transformers-static-cache 2>&1 \
        | quiet | tee -a "$out/more.log"
    timeout 90 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 "${set_[@]}" --engine-only \
        --one-pass-attention off 2>&1 | quiet | tee -a "$out/more.log"
    timeout 90 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 "${set_[@]}" --engine-only \
        --triton-attention --compare-exact 2>&1 | quiet | tee -a "$out/more.log"
    timeout 90 python3 benchmarks/attention_products.py --device cuda 2>&1 | tee -a "$out/more.log"
    exit 0
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/setup.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
    | tee -a "$out/setup.txt"
# cuBLAS reproducible across streams (the graphs' warm-up runs on a side stream; the test compares to the bit)
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py \
    -k "static or cuda or device or one_pass or batched or overlap" 2>&1 | tail -15 | tee -a "$out/setup.txt"
block=16 warps=4 best_rate=0
for bw in 16,4 32,4 32,8 64,8; do
    b=${bw%,*} w=${bw#*,}
    rate=$(rate_of --triton-step --triton-block "$b" --triton-warps "$w")
    echo "Triton step, $b rows and $w warps a program, sync_every 8, overlap on (train problems):" \
        "${rate:-failed} tokens/s" | tee -a "$out/sync.txt"
    if [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then block=$b warps=$w best_rate=$rate; fi
done
step=(--triton-step --triton-block "$block" --triton-warps "$warps")
if [ "$best_rate" = 0 ]; then
    step=()
    best_rate=$(rate_of)
    echo "the Triton step ran nowhere: the torch path's step, sync_every 8, overlap on: ${best_rate:-failed} tokens/s" \
        | tee -a "$out/sync.txt"
    best_rate=${best_rate:-0}
fi
ov=on
rate=$(rate_of ${step[@]+"${step[@]}"} --overlap off)
echo "overlap off: ${rate:-failed} tokens/s (on: $best_rate)" | tee -a "$out/sync.txt"
if [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then ov=off best_rate=$rate; fi
best=8
for k in 4 16; do
    rate=$(rate_of ${step[@]+"${step[@]}"} --overlap "$ov" --sync-every "$k")
    echo "sync_every $k: ${rate:-failed} tokens/s (8: as above)" | tee -a "$out/sync.txt"
    if [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then best=$k best_rate=$rate; fi
done
chosen="the torch path's step"
if [ -n "${step[*]-}" ]; then chosen="the Triton step, $block rows and $warps warps a program"; fi
echo "chosen on train problems: sync_every $best, overlap $ov, $chosen" | tee -a "$out/sync.txt"
echo "part 2: bash benchmarks/gpu_check.sh 2 $best $ov $block $warps" | tee -a "$out/sync.txt"
timeout 180 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" \
    ${step[@]+"${step[@]}"} --compare-exact --transformers-static-cache 2>&1 | quiet | tee "$out/bf16_step.log"
timeout 150 python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" \
    --compare-exact --transformers-static-cache 2>&1 | quiet | tee "$out/bf16.log"

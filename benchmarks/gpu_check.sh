#!/usr/bin/env bash
# Issue 16's GPU checks in one call, for a session lent a GPU (see /work/.library/device):
#   bash benchmarks/gpu_check.sh        (logs under $OUT, else /tmp/gpu_check: 10 files)
# 1. the CUDA tests (static decode, graphs captured and replayed);
# 2. static decode's sync_every (4, 8 or 16), then whether a round is queued before the last one is read
#    (--overlap on or off), chosen on training problems (engine alone, bfloat16);
# 3. benchmarks/sampling.py on the test problems with that setting: bfloat16 (the goal) with the
#    exact loop compared and transformers' static cache tried too; the same with static decode's whole step as
#    Triton kernels (tiny/step_kernel.py; its rows and warps a program chosen on training problems first),
#    and both profiled; benchmarks/profile_engine.py (where that
#    call's time goes); float32; a fresh draw (--problem-seed 1); and the engine with static decode's
#    attention chunk by chunk, as before one-pass attention, and as the Triton kernel (off by default until
#    this measures it, with the Triton tests first); benchmarks/attention_products.py. Each log is written as
#    it runs: a run cut short still leaves what it printed.
# The machine's python3 and packages are used as they are: thinkscale runs from src/.
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/setup.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
    | tee -a "$out/setup.txt"
# cuBLAS reproducible across streams (the graphs' warm-up runs on a side stream; the test compares to the bit)
CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py \
    -k "static or cuda or device or one_pass or batched" 2>&1 | tail -15 | tee -a "$out/setup.txt"
python3 -m pytest -q -p no:cacheprovider -m triton tests/test_attention_kernel.py tests/test_step_kernel.py 2>&1 \
    | tail -8 | tee -a "$out/setup.txt"
best=8 best_rate=0
for k in 4 8 16; do
    line=$(python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --split train --engine-only --sync-every "$k" \
           2>&1 | grep 'tokens/s$' | tail -1)
    rate=$(echo "$line" | sed 's/.*= \([0-9,]*\) tokens\/s$/\1/' | tr -d ,)
    echo "sync_every $k (train problems): ${rate:-failed} tokens/s" | tee -a "$out/sync.txt"
    if [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then best=$k best_rate=$rate; fi
done
echo "chosen on train problems: sync_every $best" | tee -a "$out/sync.txt"
ov=on
line=$(python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --split train --engine-only --sync-every "$best" \
       --overlap off 2>&1 | grep 'tokens/s$' | tail -1)
rate=$(echo "$line" | sed 's/.*= \([0-9,]*\) tokens\/s$/\1/' | tr -d ,)
echo "sync_every $best, overlap off (train problems): ${rate:-failed} tokens/s (on: $best_rate)" | tee -a "$out/sync.txt"
if [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then ov=off; fi
echo "chosen on train problems: overlap $ov" | tee -a "$out/sync.txt"
python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --compare-exact \
    --transformers-static-cache 2>&1 \
    | grep -v '^Loading' | tee "$out/bf16.log"
block=16 warps=4 block_rate=0
for bw in 16,4 32,4 32,8 64,8; do
    b=${bw%,*} w=${bw#*,}
    line=$(python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --split train --engine-only \
           --sync-every "$best" --overlap "$ov" --triton-step --triton-block "$b" --triton-warps "$w" 2>&1 | grep 'tokens/s$' | tail -1)
    rate=$(echo "$line" | sed 's/.*= \([0-9,]*\) tokens\/s$/\1/' | tr -d ,)
    echo "Triton step, $b rows and $w warps a program (train problems): ${rate:-failed} tokens/s" \
        | tee -a "$out/sync.txt"
    if [ -n "$rate" ] && [ "$rate" -gt "$block_rate" ]; then block=$b warps=$w block_rate=$rate; fi
done
echo "chosen on train problems: $block rows and $warps warps a program" | tee -a "$out/sync.txt"
python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --triton-step \
    --triton-block "$block" --triton-warps "$warps" --compare-exact --transformers-static-cache 2>&1 \
    | grep -v '^Loading' | tee "$out/bf16_step.log"
python3 benchmarks/profile_engine.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" 2>&1 | grep -v 'USDT\|_warn_once\|acc_events' \
    | tee "$out/profile.log"
python3 benchmarks/profile_engine.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --triton-step \
    --triton-block "$block" --triton-warps "$warps" 2>&1 \
    | grep -v 'USDT\|_warn_once\|acc_events' | tee "$out/profile_step.log"
python3 benchmarks/sampling.py --device cuda --sync-every "$best" --overlap "$ov" --transformers-static-cache 2>&1 \
    | grep -v '^Loading' | tee "$out/fp32.log"
python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --problem-seed 1 \
    --transformers-static-cache 2>&1 | grep -v '^Loading' | tee "$out/bf16_seed1.log"
python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --engine-only \
    --one-pass-attention off 2>&1 | grep -v '^Loading' | tee "$out/bf16_chunked.log"
python3 benchmarks/sampling.py --device cuda --dtype bfloat16 --sync-every "$best" --overlap "$ov" --engine-only \
    --triton-attention --compare-exact 2>&1 | grep -v '^Loading' | tee -a "$out/bf16_chunked.log"
python3 benchmarks/attention_products.py --device cuda 2>&1 | tee "$out/attention.txt"

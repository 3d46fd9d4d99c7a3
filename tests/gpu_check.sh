#!/usr/bin/env bash
# The CUDA paths in a few minutes on one GPU, no hub (tiny random models, gpt2-small-random): bf16 load,
# dump, 30 training iterations eager and compiled (recompiles counted), unfreezing, resume, eval, FSDP on
# one rank, low-rank copies, and bench.py's GPT-2-small step in bf16 with compile. Ends with a table. Not run by pytest.
#     bash tests/gpu_check.sh                      # on a machine with a GPU; skips with a message without one
#     DEVICE=cpu BENCH_MODEL=tiny-gpt2 BENCH_LAYER=2 BENCH_DTYPE=float32 bash tests/gpu_check.sh   # a CPU dry run
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DEVICE=${DEVICE:-cuda}
BENCH_MODEL=${BENCH_MODEL:-gpt2-small-random}
BENCH_LAYER=${BENCH_LAYER:-6}
BENCH_BATCH=${BENCH_BATCH:-64}
BENCH_DTYPE=${BENCH_DTYPE:-bfloat16}  # a CPU without bf16 units emulates it: its peak matmul alone takes minutes
if [ "$DEVICE" = cuda ] && ! $PY -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): skipped. DEVICE=cpu runs the steps on a CPU."
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/log
ROWS=()
FAILED=0

step() {  # step NAME RESULT_COMMAND -- COMMAND...: run COMMAND, then RESULT_COMMAND reads its log for the table
    local name=$1 result=$2; shift 3
    local t0=$SECONDS
    echo "== $name: $*"
    if "$@" > "$LOG.$name" 2>&1; then status=ok; else status=FAILED; FAILED=1; tail -20 "$LOG.$name"; fi
    ROWS+=("$(printf '%-10s %-7s %5ss  %s' "$name" "$status" $((SECONDS - t0)) "$(eval "$result" < "$LOG.$name" 2>/dev/null | tail -1)")")
}

TINY="--model=tiny-llama --layer=2 --ctx=32 --device=$DEVICE --dtype=bfloat16"
TRAIN="$TINY --out_dir=$WORK/out --t_text=4 --batch_size=16 --max_iters=30 --unfreeze_at=15 --lora_rank=0 --eval_interval=15 \
       --periodic_eval_samples=32 --log_interval=5 --ckpt_interval=10 --keep_last=3 --warmup_iters=5 --alpha_warmup_iters=10 \
       --tau_hold_iters=5 --tau_decay_iters=20 --warm_start_weight=0 --num_print_samples=0"
$PY -c "import sys; sys.path.insert(0, 'tests'); from conftest import make_corpus; import pathlib; make_corpus(pathlib.Path('$WORK/corpus'))"

step load "grep ok" -- $PY -c "
import torch
from model import TINY_MODELS, load_model
for name in TINY_MODELS:
    lm, _ = load_model(name, '$DEVICE', dtype='bfloat16')
    assert {(p.dtype, p.device.type) for p in lm.parameters()} == {(torch.bfloat16, '$DEVICE')}, name
    assert all(b.dtype == torch.float32 for n, b in lm.named_buffers() if 'inv_freq' in n), name
print('ok: 5 tiny models in bf16 on $DEVICE, rotary inv_freq fp32')"
step dump "grep 'wrote'" -- $PY dump.py $TINY --data_dir=$WORK/corpus --out_dir=$WORK/out --num_train_samples=2000 --num_val_samples=200
LAST="grep '^iter 30:' | grep -o 'loss [0-9.]*\|[0-9.]* samples/s\|peak [^,]*' | paste -sd' '"
step eager "$LAST" -- \
    $PY train.py $TRAIN --run_name=eager
export TORCH_LOGS=recompiles
step compile "echo \$(grep -c 'Recompiling function') recompiles" -- \
    bash -c "$PY train.py $TRAIN --run_name=compiled --compile=True && ! grep -q 'recompile_limit\|cache_size_limit' $LOG.compile"
unset TORCH_LOGS
mkdir -p "$WORK/out/resumed" && cp "$WORK/out/eager/ckpt_20.pt" "$WORK/out/resumed/ckpt.pt"
step resume "cat" -- bash -c "$PY train.py $TRAIN --run_name=resumed --init_from=resume > /dev/null && $PY -c \"
import torch
a, b = (torch.load('$WORK/out/' + r + '/ckpt.pt', weights_only=True)['lens'] for r in ('eager', 'resumed'))
print(f'resumed at 20 vs uninterrupted: max |diff| {max((a[k].float() - b[k].float()).abs().max().item() for k in a):.2e}')\""
step eval "grep -o 'KL mean (nats) *[0-9.]*'" -- $PY eval.py $TINY --out_dir=$WORK/out --run_name=eager --eval_samples=64 --best_of_k=1
step fsdp "$LAST" -- \
    $PY -m torch.distributed.run --standalone --nproc_per_node=1 train.py $TRAIN --run_name=fsdp --fsdp=True
step lora "$LAST" -- \
    $PY train.py $TRAIN --run_name=lora --lora_rank=8 --lm_lr_mult=1.0
BENCH="--model=$BENCH_MODEL --layer=$BENCH_LAYER --ctx=64 --device=$DEVICE --dtype=$BENCH_DTYPE --out_dir=$WORK/bench"
step bench "grep -o '^fast path: [0-9.]* samples/s\|[0-9.]*% of the peak (MFU)\|peak CUDA memory [0-9]* MiB' | paste -sd' '" -- \
    bash -c "$PY dump.py $BENCH --data_dir=$WORK/corpus --num_train_samples=$((BENCH_BATCH * 12)) --num_val_samples=$BENCH_BATCH \
    > /dev/null && $PY bench.py $BENCH --t_text=10 --batch_size=$BENCH_BATCH --periodic_eval_samples=$BENCH_BATCH --compile=True \
    --unfreeze_at=-1 --lora_rank=0 \
    --warmup_steps=3 --num_steps=5"
echo
echo "gpu_check on $($PY -c "import torch; print(torch.cuda.get_device_name() if '$DEVICE' == 'cuda' else 'cpu')"), $(date -u +%Y-%m-%d)"
printf '%s\n' "${ROWS[@]}"
exit $FAILED

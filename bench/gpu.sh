#!/usr/bin/env bash
# The device proof in one command, on the GPU check machine (one GPU, Python 3.12 with torch, no Ray, no
# network): installs gpu-carry/ (`make gpu-carry`, built where there is network) offline and measures, each
# part within its own wall budget, about 5 minutes in all:
#   throughput-fp32/bf16/fp16  2x512 and 3x512 LSTMs at batch 128 x 128 chars: rnnfarm's loop against a plain
#                              PyTorch cuDNN loop of the same model, chars/s and their ratio (bench/throughput.py)
#   resume                     a run with dropout stopped and resumed on CUDA against an unbroken one, bitwise
#   quality                    tiny Shakespeare (90/5/5) in about 2 minutes; the goal is val <= 1.35 nats/char
#   serve                      `rnnfarm serve --gpus-per-replica 1` at concurrency 32 (bench/serve.py's client)
#   sweep                      4 one-worker trials at 0.25 GPU per worker
# After each part its figures, or its failure with its last lines, go into $OUT/gpu.json and $OUT/gpu.md (a
# table BENCHMARKS.md can take as it is), and every part's log into $OUT/logs.tar.gz: a failed part does not stop
# the next, and a cut run keeps what finished. The rest (the installed carry, storage) stays in $GPU_SH_WORK.
#
#   bash bench/gpu.sh                                          # there; results in $OUT (default ./bench-out)
#   GPU_SH_DEVICE=cpu GPU_SH_SMALL=1 GPU_SH_TIME_SCALE=3 bash bench/gpu.sh   # the same steps at toy sizes on a CPU
# Also: PYTHON (default python3), GPU_SH_CARRY (default gpu-carry), GPU_SH_WORK (default /tmp/rnnfarm-gpu),
# GPU_SH_PARTS (only these parts, e.g. "serve sweep": a rerun adds to the results already in $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-./bench-out}
export GPU_SH_CARRY=${GPU_SH_CARRY:-gpu-carry}
WORK=${GPU_SH_WORK:-/tmp/rnnfarm-gpu}
SITE=$WORK/site
DEVICE=${GPU_SH_DEVICE:-cuda}
SCALE=${GPU_SH_TIME_SCALE:-1}  # budgets times this: a CPU at toy sizes is slower than the GPU at full ones
SMALL=()
[ "${GPU_SH_SMALL:-0}" = 1 ] && SMALL=(--small)
TOTAL=$((300 * SCALE))
mkdir -p "$OUT" "$WORK/parts" "$WORK/logs"
STORAGE=$WORK/rnnfarm-data

echo "installing $GPU_SH_CARRY into $SITE (offline)"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" "$GPU_SH_CARRY"/wheels/*.whl \
  || { echo "the carry did not install: see above" >&2; exit 1; }
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export RNNFARM_CACHE=$PWD/$GPU_SH_CARRY/cache  # tiny Shakespeare by its sha256: the corpus builds offline
export CUBLAS_WORKSPACE_CONFIG=:4096:8         # lets the resume part's deterministic variant run cuBLAS
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "torch sees no CUDA GPU: no GPU figure can be taken here (GPU_SH_DEVICE=cpu checks the script)" >&2
  exit 1
fi
failed=0

# part NAME BUDGET_S COMMAND...: runs COMMAND (which writes $WORK/parts/NAME.json) within BUDGET_S seconds (or
# what is left of the total; GPU_SH_BUDGET tells it), then files its result or its failure.
part() {
  local name=$1 budget=$(($2 * SCALE)) left=$((TOTAL - SECONDS)) started=$SECONDS rc
  shift 2
  [ -z "${GPU_SH_PARTS:-}" ] || [[ " $GPU_SH_PARTS " == *" $name "* ]] || return 0
  [ "$budget" -gt "$left" ] && budget=$left
  if [ "$budget" -lt 10 ]; then
    echo "$name: skipped, ${left}s of the total left" | tee "$WORK/logs/$name.log"
    rc=125
  else
    echo "$name: up to ${budget}s"
    rm -f "$WORK/parts/$name.json"
    GPU_SH_BUDGET=$budget timeout --kill-after=20 "$budget" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
  fi
  "$PY" bench/gpu_parts.py record "$name" --out "$OUT" --json "$WORK/parts/$name.json" --rc "$rc" \
    --log "$WORK/logs/$name.log" --wall-s $((SECONDS - started))
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs parts
  echo "$name: exit $rc in $((SECONDS - started))s"
  [ "$rc" = 0 ] || failed=1
}

if [ ${#SMALL[@]} = 1 ]; then
  sizes=(--sizes 1x32,2x32 --batch 4 --seq-len 16 --steps 2 --reps 1)
else
  sizes=(--sizes 2x512,3x512 --batch 128 --seq-len 128 --steps 50 --reps 2)
fi
budget=35  # the first builds the corpus
for precision in fp32 bf16 fp16; do
  part "throughput-$precision" $budget "$PY" bench/throughput.py --device "$DEVICE" --precision "$precision" \
    "${sizes[@]}" --storage "$STORAGE" --json "$WORK/parts/throughput-$precision.json"
  budget=25
done
common=(--device "$DEVICE" "${SMALL[@]}" --storage "$STORAGE")
part resume 25 "$PY" bench/gpu_parts.py resume "${common[@]}" --json "$WORK/parts/resume.json"
part quality 95 "$PY" bench/gpu_parts.py quality "${common[@]}" --json "$WORK/parts/quality.json"
part serve 35 "$PY" bench/gpu_parts.py serve "${common[@]}" --json "$WORK/parts/serve.json"
part sweep 40 "$PY" bench/gpu_parts.py sweep "${common[@]}" --json "$WORK/parts/sweep.json"

echo "done in ${SECONDS}s: $OUT/gpu.json, $OUT/gpu.md"
cat "$OUT/gpu.md"
exit $failed

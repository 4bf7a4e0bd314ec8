#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md, in a few minutes on one NVIDIA GPU:
#   1. training throughput, rnnfarm's loop against a plain PyTorch loop (cuDNN LSTM), fp32 and bf16,
#      for 2x512 and 3x512 LSTMs (bench/throughput.py);
#   2. a short tiny-Shakespeare training in fp32 and in bf16: val loss at equal steps, speed (bench/precision.py);
#   3. where Ray is installed, the same kind of run end to end: `rnnfarm run` with `cluster.use_gpu: true`;
#   4. and the tiny-Shakespeare quality run of deploy/shakespeare-quality.yaml on one GPU worker, the same
#      steps as the CPU figure in BENCHMARKS.md (bench/quality.py shakespeare --gpu; $OUT/quality.json).
# Results go to $OUT (default ./bench-out): one .txt and one .json per part, and summary.txt.
#
# Set-up: a venv of its own ($VENV, default .venv-gpu) with pip.
#   TORCH        pip requirement for torch (default torch==2.13.0; PyPI's Linux wheel is a CUDA build)
#   TORCH_INDEX  an index URL to take torch from, e.g. https://download.pytorch.org/whl/cu128
#   PIP_ARGS     more pip arguments, e.g. "--no-index --find-links wheels/" on a machine with no index
#   SYSTEM_SITE  1: make the venv with --system-site-packages and keep a torch already installed there
# With no GPU visible it says so, runs the same steps at smoke-test size on the CPU (so the script
# itself is checked), and exits 1: CPU figures are not GPU figures.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-./bench-out}
VENV=${VENV:-.venv-gpu}
TORCH=${TORCH:-torch==2.13.0}
mkdir -p "$OUT"
read -r -a pip_args <<<"${PIP_ARGS:-}"

if [ ! -x "$VENV/bin/python" ]; then
  if [ "${SYSTEM_SITE:-0}" = 1 ]; then python3 -m venv --system-site-packages "$VENV"; else python3 -m venv "$VENV"; fi
fi
PY=$VENV/bin/python
if [ "${SYSTEM_SITE:-0}" = 1 ] && "$PY" -c "import torch" 2>/dev/null; then
  echo "using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif [ -n "${TORCH_INDEX:-}" ]; then
  "$PY" -m pip install --quiet "${pip_args[@]}" --index-url "$TORCH_INDEX" "$TORCH"
else
  "$PY" -m pip install --quiet "${pip_args[@]}" "$TORCH"
fi
"$PY" -m pip install --quiet "${pip_args[@]}" -e .

summary=$OUT/summary.txt
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  gpu=1
  "$PY" -c "import torch; print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version())" | tee "$summary"
  device=cuda; throughput=(--steps 100 --reps 3 --batch 64); training=(--steps 600 --eval-every 200 --layers 2 --hidden 512 --batch 64)
else
  gpu=0
  echo "no CUDA GPU visible to torch $("$PY" -c 'import torch; print(torch.__version__)'): no GPU figures;" \
    "running every step at smoke-test size on the CPU instead" | tee "$summary" >&2
  device=cpu; throughput=(--steps 2 --reps 1 --batch 4 --seq-len 16); training=(--steps 4 --eval-every 2 --layers 1 --hidden 32 --batch 4 --seq-len 16)
fi

for precision in fp32 bf16; do
  "$PY" bench/throughput.py --device "$device" --sizes 2x512,3x512 --precision "$precision" "${throughput[@]}" \
    --json "$OUT/throughput-$precision.json" | tee "$OUT/throughput-$precision.txt" | tee -a "$summary"
done
"$PY" bench/precision.py --device "$device" "${training[@]}" --json "$OUT/precision.json" \
  | tee "$OUT/precision.txt" | tee -a "$summary"

if "$PY" -c "import ray" 2>/dev/null; then
  if [ $gpu = 1 ]; then run=(1200 64 50 300 true); else run=(4 4 1 2 false); fi  # steps batch warmup eval use_gpu
  spec=$OUT/gpu-run.yaml
  cat >"$spec" <<EOF
name: gpu-shakespeare-$(date +%s)
storage: ./rnnfarm-data
model: {cell: lstm, layers: 2, hidden: 512, embedding: 64, dropout: 0.1}
train: {steps: ${run[0]}, batch_size: ${run[1]}, seq_len: 128, lr: 0.002, warmup_steps: ${run[2]}, eval_every: ${run[3]}}
samples: {temperatures: [0.8], length: 200}
cluster: {workers: 1, use_gpu: ${run[4]}, cpus_per_worker: 1}
EOF
  RNNFARM_LOG_FORMAT=json "$VENV/bin/rnnfarm" run "$spec" >"$OUT/gpu-run.txt" 2>"$OUT/gpu-run.log"
  { echo "rnnfarm run $spec:"; grep -v '^$' "$OUT/gpu-run.txt" | head -3
    grep -E '"event": "(training|first step|eval)"' "$OUT/gpu-run.log"; } | tee -a "$summary"
  if [ $gpu = 1 ]; then quality=(--gpu); else quality=(--minutes 0.05); fi  # the CPU path: 10 steps
  "$PY" bench/quality.py --results "$OUT/quality.json" --benchmarks "$OUT/quality.md" shakespeare "${quality[@]}" \
    2>"$OUT/quality.log"
  "$PY" -c "import json, sys; f = json.load(open(sys.argv[1]))['figures']; s = f.get('shakespeare_gpu') or f['shakespeare']
print(f\"quality run: {s['config']['train']['steps']} steps, whole rnnfarm run {s['wall_s']} s, best val {s['best_val_loss']}\")" \
    "$OUT/quality.json" | tee -a "$summary"
else
  echo "Ray is not installed in $VENV: skipped the rnnfarm run through Ray Train" | tee -a "$summary"
fi

if [ $gpu = 0 ]; then
  echo "no CUDA GPU visible: the steps ran on the CPU at smoke-test size only; see $summary" >&2
  exit 1
fi
echo "GPU figures in $OUT"

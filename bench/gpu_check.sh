#!/usr/bin/env bash
# GPU check in one command: the CUDA tests (`pytest -m cuda`), then the throughput benches (train, score /
# embed / exact scan, design when `codonlm design` exists), one table at the end. Under 8 minutes on one GPU.
#
#     bash bench/gpu_check.sh [--run RUN_ID]        # on a machine with a CUDA GPU
#     bash bench/gpu_check.sh --cpu-dry-run          # anywhere: CPU, tiny sizes, to check the script itself
#
# Without --run the benches use an untrained model of configs/tiny_cpu.yaml on data/processed (speed does
# not depend on the weights). Each step's full output goes to $LOG_DIR (default: a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DRY=0
RUN=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --run) RUN=(--run "$2"); shift ;;
    *) echo "gpu_check.sh: unknown option $1 (use --cpu-dry-run or --run RUN_ID)" >&2; exit 2 ;;
  esac
  shift
done
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  TRAIN=(--device cpu --n_layer 1 --n_head 2 --n_embd 64 --block 64 --batch 2 --warmup 1 --steps 1 --modes fp32)
  INFER=(--device cpu --synthetic --genes 20 --scan-codons 40 --scan-every 20 --repeats 1)
  SCAN1K=()
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible; run with --cpu-dry-run to check the script on CPU" >&2
    exit 2
  fi
  DEVICE=cuda
  TRAIN=(--device cuda --n_layer 4 --n_head 4 --n_embd 128 --block 256 --batch 64 --steps 20 --modes fp32,bf16)
  INFER=(--device cuda --genes 10000 --scan-codons 300 --scan-every 1 --repeats 2 --amp)
  SCAN1K=(--device cuda --genes 200 --scan-codons 1000 --scan-every 5 --repeats 1 --amp)
fi

rows=()
step() {  # name, then the command; keeps the output, records status and seconds
  local name=$1; shift
  local t0=$SECONDS
  if "$@" > "$LOG_DIR/$name.log" 2> "$LOG_DIR/$name.err"; then status=ok; else status="FAILED (rc $?)"; fi
  rows+=("$(printf '%-14s %-12s %5ss  %s' "$name" "$status" "$((SECONDS - t0))" "$LOG_DIR/$name.log")")
}

step cuda-tests "$PY" -m pytest -q -m cuda tests/test_cuda.py
step train "$PY" bench/train_throughput.py "${TRAIN[@]}"
step inference "$PY" bench/inference_speed.py "${RUN[@]}" "${INFER[@]}"
if [ ${#SCAN1K[@]} -gt 0 ]; then
  step scan-1000 "$PY" bench/inference_speed.py "${RUN[@]}" "${SCAN1K[@]}"
fi
if "$PY" -m codonlm.cli design --help > /dev/null 2>&1; then
  step design "$PY" -m codonlm.cli design --help
  design_note="design: 'codonlm design' exists; add its bench here"
else
  design_note="design: skipped ('codonlm design' does not exist in this version)"
fi

echo "== gpu_check ($DEVICE$([ "$DRY" = 1 ] && echo ', cpu dry run: tiny sizes, synthetic genes')) =="
echo "-- cuda tests: $(tail -n 1 "$LOG_DIR/cuda-tests.log")"
echo "-- train:"
sed -n '/^mode /,$p' "$LOG_DIR/train.log" | head -n 8
for f in inference scan-1000; do
  [ -f "$LOG_DIR/$f.log" ] || continue
  echo "-- $f:"
  grep -E "^(#|row|bare|score|embed|scan)" "$LOG_DIR/$f.log"
done
echo "-- $design_note"
echo "-- steps:"
printf '%s\n' "${rows[@]}"
for r in "${rows[@]}"; do case "$r" in *FAILED*) exit 1 ;; esac; done
exit 0

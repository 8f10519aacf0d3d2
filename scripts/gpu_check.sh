#!/usr/bin/env bash
# One-shot GPU check of the statistics kernel, the spectra and the end-to-end ratio (issue 16).
#
#   scripts/gpu_check.sh                 # on the device machine, from the repository root: at most ~9 min
#   scripts/gpu_check.sh --device cpu    # dry run here: Triton interpreter, tiny sizes, a few seconds of work
#
# Steps, each under its own time limit (a step that runs out is reported and the next one still runs):
#   1. the GPU tests (pytest -m gpu: the compiled kernel against float64, splits, no re-tuning on a ragged
#      batch, GPU eigen-decompositions against the CPU);                                         <= 150 s
#   2. the kernel benchmark: Triton vs torch.mm float32-out vs bf16 matmul, d in {768, 3072, 4096},
#      n in {50k, 400k}, TFLOP/s and errors; then float32 inputs (ieee / tf32x3 / rounded to bf16)
#      at d = 768, n = 50k;                                                                       <= 150 s
#   3. the end-to-end benchmark: timm vit_base_patch16_224 (batch 256) and vit_large_patch16_224 (batch
#      128), random weights, bf16 autocast: forward only, naive hook, ours, images/s and ratios side by
#      side (median of repeats), and the eigen-decomposition time of all layers.                  <= 240 s
# It uses the machine's own python3, torch and triton and installs nothing (timm is in the device image;
# if it is missing, step 3 says so and is skipped: carry a timm wheel, see the device README).
# Tables and logs go to $OUT (the device tool's output folder), else benchmarks/out/gpu_check.
set -uo pipefail

DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE="${2:-}"; fi
if [[ "$DEVICE" != "cuda" && "$DEVICE" != "cpu" ]]; then
    echo "usage: scripts/gpu_check.sh [--device cuda|cpu]" >&2
    exit 64
fi
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/out/gpu_check}"
RAW="$OUT_DIR/raw"  # the benchmarks' JSON/markdown files, packed into raw.tar.gz at the end (the device
mkdir -p "$OUT_DIR" "$RAW"  # tool returns at most 8 files)
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
START=$(date +%s)

say() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S OUTFILE COMMAND...: run with a time limit, keep its output, report the outcome.
FAILED=0
step() {
    local name="$1" limit="$2" outfile="$3"
    shift 3
    say "$name: starting (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$outfile" 2>&1
    local rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        say "$name: STOPPED at its ${limit}s limit (partial output in $outfile)"
        FAILED=1
    elif [[ $rc -ne 0 ]]; then
        say "$name: FAILED with exit code $rc (see $outfile)"
        FAILED=1
    else
        say "$name: ok"
    fi
    tail -n 40 "$OUT_DIR/$outfile"
}

if [[ "$DEVICE" == "cuda" ]]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        say "CUDA is not available on this machine (torch.cuda.is_available() is False): nothing was run."
        say "For a dry run on the CPU: scripts/gpu_check.sh --device cpu"
        exit 2
    fi
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true
      "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"
      "$PY" -c "import timm; print('timm', timm.__version__)" 2>&1 || echo "timm missing"
    } >"$OUT_DIR/environment.txt" 2>&1
    cat "$OUT_DIR/environment.txt" | tee -a "$LOG"

    step "gpu tests" 150 gpu_tests.txt \
        "$PY" -m pytest -q -m gpu tests/test_gpu.py tests/test_spectra.py -p no:cacheprovider -x
    step "kernel benchmark (bf16)" 110 bench_kernels_bf16.txt \
        "$PY" benchmarks/bench_kernels.py --dims 768,3072,4096 --tokens 50000,400000 --repeats 10 --out-dir "$RAW"
    step "kernel benchmark (float32 inputs)" 40 bench_kernels_fp32.txt \
        "$PY" benchmarks/bench_kernels.py --fp32 --dims 768 --tokens 50000 --repeats 10 --out-dir "$RAW"
    if "$PY" -c "import timm" 2>/dev/null; then
        step "end-to-end benchmark" 240 bench_gpu_end_to_end.txt \
            "$PY" benchmarks/bench_gpu_end_to_end.py --models vit_base_patch16_224:256,vit_large_patch16_224:128 \
            --batches 4 --repeats 3 --eigen-repeats 1 --eigen-before-models vit_base_patch16_224 --out-dir "$RAW"
    else
        say "end-to-end benchmark: SKIPPED, timm is not importable with $PY"
        FAILED=1
    fi
else
    # Dry run on the CPU: the same steps at toy sizes, the kernel in Triton's interpreter. About 20 s of CPU
    # time; the generous limits are for a machine shared with other work.
    export TRITON_INTERPRET=1
    step "gpu tests (collected; they skip without CUDA)" 600 gpu_tests.txt \
        "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
    step "kernel benchmark (interpreter)" 600 bench_kernels_bf16.txt \
        "$PY" benchmarks/bench_kernels.py --device cpu --dims 64 --tokens 200 --repeats 1 --fp32 --out-dir "$RAW"
    unset TRITON_INTERPRET  # the end-to-end dry run uses the torch backend (float64 CPU accumulators)
    step "end-to-end benchmark (toy ViT)" 600 bench_gpu_end_to_end.txt \
        "$PY" benchmarks/bench_gpu_end_to_end.py --device cpu --models vit_tiny_patch16_224:2 --batches 1 \
        --repeats 1 --eigen-repeats 1 \
        --model-kwargs '{"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 10}' \
        --out-dir "$RAW"
fi

tar -czf "$OUT_DIR/raw.tar.gz" -C "$OUT_DIR" raw && rm -rf "$RAW"
say "done in $(($(date +%s) - START))s; tables in $OUT_DIR (*.txt; JSON in raw.tar.gz)"
exit $FAILED

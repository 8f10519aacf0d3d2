#!/usr/bin/env bash
# One-shot GPU check of the statistics kernel, the spectra and the end-to-end ratio (issues 16 and 28).
#
#   scripts/gpu_check.sh                 # on the device machine, from the repository root: under 8 minutes
#   scripts/gpu_check.sh --device cpu    # dry run here: Triton interpreter, tiny sizes
#
# Steps, in this order, each under its own time limit and all within one budget of $BUDGET_S seconds (a step
# that runs out is reported and the next one still runs, with what is left). Every line a step prints reaches
# the console and its file as it is printed.
#   1. the GPU tests (pytest -m gpu: compiled kernel against float64 for every operand class, deterministic
#      bits, splits at d = 3072, finite check, the side-stream copies, one cast under autocast, GPU eigen);
#   2. the kernel benchmark, bf16: Triton (autotuned and deterministic) vs torch.mm float32-out vs bf16 matmul,
#      d in {768, 3072, 4096}, n = ViT-B batches of 128 and 256 images, TFLOP/s against the bf16 peak and the
#      largest error; compiling and tuning happen in each shape's error call, before its timing;
#   3. the end-to-end benchmark: vit_base_patch16_224 and vit_large_patch16_224 at batch 128, random weights,
#      bf16 autocast: forward only vs the engine's default statistics (split halves) vs one sum per layer,
#      steady-state batches only (discovery, self-check, compile and tune once, before the clock), ratios to
#      forward only, eigen time of all layers, every layer's self-check;
#   4. the kernel benchmark for float32 inputs (ieee / tf32x3 / rounded to bf16 on load) at d = 768.
# Exit status: 0 when every step ran to its end and found everything correct; 1 otherwise (a failed test, a
# kernel error above tolerance, a failed self-check, or a step stopped at its limit); 2 without CUDA.
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
BUDGET_S="${BUDGET_S:-465}"  # the whole check; the device's own start is not part of it

say() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S OUTFILE COMMAND...: run with a time limit (at most what is left of the budget), streaming
# its output to the console and to OUTFILE, and report the outcome.
FAILED=0
step() {
    local name="$1" limit="$2" outfile="$3"
    shift 3
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        say "$name: SKIPPED, the ${BUDGET_S}s budget is spent"
        FAILED=1
        return
    fi
    say "$name: starting (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$outfile"
    local rc=${PIPESTATUS[0]}
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        say "$name: STOPPED at its ${limit}s limit (partial output in $outfile)"
        FAILED=1
    elif [[ $rc -ne 0 ]]; then
        say "$name: FAILED with exit code $rc (see $outfile)"
        FAILED=1
    else
        say "$name: ok"
    fi
}

if [[ "$DEVICE" == "cuda" ]]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        say "CUDA is not available on this machine (torch.cuda.is_available() is False): nothing was run."
        say "For a dry run on the CPU: scripts/gpu_check.sh --device cpu"
        exit 2
    fi
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true
      "$PY" -c "import torch, triton, platform; p = torch.cuda.get_device_properties(0); print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', p.name, 'SMs', p.multi_processor_count, 'smem/block', getattr(p, 'shared_memory_per_block_optin', '?'))"
      "$PY" -c "import timm; print('timm', timm.__version__)" 2>&1 || echo "timm missing"
    } 2>&1 | tee "$OUT_DIR/environment.txt" | tee -a "$LOG"

    step "gpu tests" 150 gpu_tests.txt \
        "$PY" -m pytest -q -m gpu tests/test_gpu.py tests/test_spectra.py -p no:cacheprovider
    step "kernel benchmark (bf16)" 90 bench_kernels_bf16.txt \
        "$PY" benchmarks/bench_kernels.py --dims 768,3072,4096 --tokens 25216,50432 --repeats 10 --out-dir "$RAW"
    if "$PY" -c "import timm" 2>/dev/null; then
        step "end-to-end benchmark" 170 bench_gpu_end_to_end.txt \
            "$PY" benchmarks/bench_gpu_end_to_end.py --models vit_base_patch16_224:128,vit_large_patch16_224:128 \
            --batches 4 --repeats 3 --eigen-repeats 1 --out-dir "$RAW"
    else
        say "end-to-end benchmark: SKIPPED, timm is not importable with $PY"
        FAILED=1
    fi
    step "kernel benchmark (float32 inputs)" 45 bench_kernels_fp32.txt \
        "$PY" benchmarks/bench_kernels.py --fp32 --dims 768 --tokens 50432 --repeats 10 --out-dir "$RAW"
else
    # Dry run on the CPU: the same steps at toy sizes, the kernel in Triton's interpreter. About 30 s of CPU
    # time; the generous budget is for a machine shared with other work.
    BUDGET_S="${BUDGET_S_CPU:-1500}"
    export TRITON_INTERPRET=1
    step "gpu tests (collected; they skip without CUDA)" 600 gpu_tests.txt \
        "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
    step "kernel benchmark (interpreter)" 600 bench_kernels_bf16.txt \
        "$PY" benchmarks/bench_kernels.py --device cpu --dims 64 --tokens 200 --repeats 1 --fp32 --out-dir "$RAW"
    unset TRITON_INTERPRET  # the end-to-end dry run uses the torch backend (float64 CPU accumulators)
    step "end-to-end benchmark (toy ViT)" 600 bench_gpu_end_to_end.txt \
        "$PY" benchmarks/bench_gpu_end_to_end.py --device cpu --models vit_tiny_patch16_224:2 --batches 2 \
        --repeats 1 --eigen-repeats 1 \
        --model-kwargs '{"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 10}' \
        --out-dir "$RAW"
fi

tar -czf "$OUT_DIR/raw.tar.gz" -C "$OUT_DIR" raw && rm -rf "$RAW"
say "done in $(($(date +%s) - START))s; tables in $OUT_DIR (*.txt; JSON in raw.tar.gz); exit status $FAILED"
exit $FAILED

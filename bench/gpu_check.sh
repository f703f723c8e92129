#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network; torch 2.11+cu130, triton 3.6, nvcc 13):
# build, GPU tests, GPU benchmarks; everything it measures lands under $OUT as JSON + logs.
# Budget: well under 8 minutes. Usage (from the repo root):  OUT=/some/dir bash bench/gpu_check.sh
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PY:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start ))s)" | tee -a "$OUT/steps.log"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; $PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"; nvcc --version | tail -2; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step "build"
timeout 240 $PY -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$OUT/steps.log"
tail -5 "$OUT/build.log"
$PY -m ctrlaug.ops | tee "$OUT/status.json"

step "gpu tests"
CTRLAUG_TRITON_AUTOTUNE=0 timeout 150 $PY -m pytest tests/test_region_contrast.py tests/test_correspondence.py tests/test_augment.py -q -rs --timeout=120 \
  --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/steps.log"
tail -25 "$OUT/tests.log"

step "gpu benchmarks"
timeout 240 $PY -m pytest bench/bench_region_contrast.py bench/bench_correspondence.py --benchmark-only -q \
  --benchmark-json="$OUT/bench.json" --benchmark-columns=median,min,rounds > "$OUT/bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/steps.log"
tail -40 "$OUT/bench.log"
$PY bench/summarize.py "$OUT/bench.json" > "$OUT/bench_summary.md" 2>&1 && cat "$OUT/bench_summary.md"
step "pipeline (GPU tau_l) and training-step breakdown"
timeout 120 $PY -m pytest bench/bench_pipeline.py -k low_level --benchmark-only -q \
  --benchmark-json="$OUT/bench_pipeline.json" > "$OUT/bench_pipeline.log" 2>&1
echo "pipeline rc=$?" | tee -a "$OUT/steps.log"
timeout 120 $PY bench/bench_step.py --preset gpu --json "$OUT/step.json" > "$OUT/step.log" 2>&1
echo "step rc=$?" | tee -a "$OUT/steps.log"
tail -16 "$OUT/step.log"
step "done"

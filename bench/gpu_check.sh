#!/usr/bin/env bash
# The one prepared run on a lent GPU machine (no network; torch 2.11+cu130, triton 3.6, nvcc 13).
# From the repo root:   OUT=/some/dir bash bench/gpu_check.sh
#
# Steps, in order, each with its own `timeout` (caps sum to 460 s; the whole run stops at
# GPU_CHECK_DEADLINE, 460 s by default, plus at most 10 s of SIGKILL grace: inside 8 minutes):
#   machine   GPU, driver, torch/triton/nvcc versions                     -> machine.txt
#   build     pip install -e . for the GPU's own arch (TORCH_CUDA_ARCH_LIST from nvidia-smi)
#             then `python -m ctrlaug.ops`                                 -> build.log, status.json
#   tests_cuda    CUDA backend: op tests, opcheck, torch.compile, tiny-coefficient backward
#   tests_triton  Triton backend and GPU augmentation (Triton autotune off) -> tests_*.log/.xml
#   bench_rc  region contrast ladder, Q=16384 D=128, K in {16384, 131072}, bf16 and fp32 (TF32),
#             providers eager/compile/triton/cuda except cuda-fp32         -> bench_rc.json(l)
#   bench_rc_cuda_fp32  the exact-fp32 SIMT CUDA kernel alone (slowest)   -> bench_rc_cuda_fp32.json(l)
#   bench_corr  correspondence, every provider                            -> bench_corr.json(l)
#   step      training-step breakdown (bench/bench_step.py --preset gpu)  -> step.json
#   science   bash bench/gpu_science.sh with the time left, if that file exists -> science/
# After every step $OUT/summary.json is rewritten (each step's rc, seconds, timeout), so a run
# killed from outside still returns what finished. A step that runs out of time gets SIGINT:
# pytest then writes its junit/benchmark JSON for the tests that finished (bench/gpu_check_plugin.py
# keeps the benchmark JSON valid and also appends each finished benchmark to <step>.jsonl at once).
#
# Without a CUDA device the script stops at once (exit 3) with a clear message, unless
#   GPU_CHECK_DRY=1    dry run on any machine: the build step only checks its inputs, every pytest
#                      step runs with --collect-only (the -k selections are real), bench_step shows
#                      its --help, the science script is syntax-checked;
#   GPU_CHECK_FORCE=1  run every step for real anyway (each fails fast without a GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PY:-python3}
DRY=${GPU_CHECK_DRY:-0}
FORCE=${GPU_CHECK_FORCE:-0}
DEADLINE=${GPU_CHECK_DEADLINE:-460}
start=$(date +%s)
STEPS="$OUT/steps.tsv"
: > "$STEPS"
: > "$OUT/steps.log"

elapsed() { echo $(($(date +%s) - start)); }
say() { echo "== $* ($(elapsed)s)" | tee -a "$OUT/steps.log"; }

json_str() { # a JSON string literal (the values here are plain: names, versions, arch lists)
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

GPU_NAME=""
ARCH=""
NOTE=""

write_summary() { # $1: true once the run is over
  local tmp="$OUT/summary.json.tmp" first=1 name rc secs cap t why
  {
    printf '{\n  "dry": %s,\n  "gpu": %s,\n  "arch_list": %s,\n  "deadline_s": %s,\n' \
      "$([ "$DRY" = 1 ] && echo true || echo false)" "$(json_str "$GPU_NAME")" "$(json_str "$ARCH")" "$DEADLINE"
    printf '  "note": %s,\n  "steps": [' "$(json_str "$NOTE")"
    while IFS=$'\t' read -r name rc secs cap t why; do
      [ $first = 1 ] || printf ','
      first=0
      printf '\n    {"name": %s, "rc": %s, "seconds": %s, "cap_s": %s, "timeout_s": %s, "timed_out": %s, "note": %s}' \
        "$(json_str "$name")" "$rc" "$secs" "$cap" "$t" \
        "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" "$(json_str "$why")"
    done < "$STEPS"
    printf '\n  ],\n  "total_seconds": %s,\n  "complete": %s\n}\n' "$(elapsed)" "$1"
  } > "$tmp" && mv "$tmp" "$OUT/summary.json"
}

# run_step NAME CAP_SECONDS CMD...: CMD's output goes to $OUT/NAME.log; SIGINT at the timeout,
# SIGKILL 10 s later. The timeout is the cap or what is left before the deadline; a dry run
# (timing nothing, maybe on a busy CPU machine) allows GPU_CHECK_DRY_TIMEOUT (600 s) per step.
run_step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(elapsed)))
  local t=$((cap < left ? cap : left))
  [ "$DRY" = 1 ] && t=${GPU_CHECK_DRY_TIMEOUT:-600}
  if [ "$t" -lt 5 ]; then
    say "$name: skipped, no time left before the ${DEADLINE}s deadline"
    printf '%s\tnull\t0\t%s\t0\t%s\n' "$name" "$cap" "skipped: deadline" >> "$STEPS"
    write_summary false
    return 0
  fi
  say "$name (timeout ${t}s)"
  local t0 rc
  t0=$(date +%s)
  if declare -F "$1" > /dev/null; then # a step function of this script (exported below)
    timeout -s INT -k 10 "$t" bash -c '"$@"' step "$@" > "$OUT/$name.log" 2>&1
  else
    timeout -s INT -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1
  fi
  rc=$?
  local secs=$(($(date +%s) - t0))
  echo "$name rc=$rc ${secs}s" | tee -a "$OUT/steps.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$cap" "$t" "" >> "$STEPS"
  write_summary false
  tail -n 15 "$OUT/$name.log"
  return 0
}

# ---------------------------------------------------------------------------------------------
# Is there a GPU? Which architecture?
# ---------------------------------------------------------------------------------------------
HAVE_GPU=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
  HAVE_GPU=1
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -n 1 | tr -d ' ')
  if [ -z "$cap" ]; then
    cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2> /dev/null)
  fi
  ARCH=${TORCH_CUDA_ARCH_LIST:-${cap:-9.0}}
else
  ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
fi
export TORCH_CUDA_ARCH_LIST=$ARCH
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc > /dev/null 2>&1; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  export CUDA_HOME
fi

if [ "$HAVE_GPU" = 0 ] && [ "$DRY" != 1 ] && [ "$FORCE" != 1 ]; then
  NOTE="no CUDA device (nvidia-smi missing or sees no GPU): nothing run. GPU_CHECK_DRY=1 for a dry run, GPU_CHECK_FORCE=1 to run anyway"
  say "$NOTE"
  write_summary true
  exit 3
fi
[ "$DRY" = 1 ] && NOTE="dry run: builds nothing, collects tests and benchmarks, times nothing; without CUDA the benchmark files define their CPU shapes, so the K selections collect nothing (pytest rc 5)"
[ "$DRY" != 1 ] && [ "$HAVE_GPU" = 0 ] && NOTE="forced run without a CUDA device"
say "gpu_check: gpu='${GPU_NAME:-none}' TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$MAX_JOBS out=$OUT dry=$DRY"

# pytest: --collect-only in a dry run; the plugin keeps finished benchmarks on a timeout.
COLLECT=()
[ "$DRY" = 1 ] && COLLECT=(--collect-only -q)
pytest_step() { # NAME CAP ARGS... (bench steps also get <NAME>.json and <NAME>.jsonl)
  local name=$1 cap=$2
  shift 2
  GPU_CHECK_JSONL="$OUT/$name.jsonl" PYTHONPATH="$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" \
    run_step "$name" "$cap" "$PY" -m pytest -p gpu_check_plugin -p no:cacheprovider "$@" ${COLLECT[@]+"${COLLECT[@]}"}
}
bench_step() { # NAME CAP ARGS...
  local name=$1 cap=$2
  shift 2
  pytest_step "$name" "$cap" "$@" --benchmark-only -q --benchmark-json="$OUT/$name.json" \
    --benchmark-columns=median,min,rounds
}

# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
machine() {
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  $PY -c "import triton; print('triton', triton.__version__)"
  nvcc --version | tail -n 2
  nproc
}
export -f machine
export PY DRY OUT
run_step machine 15 machine
cp "$OUT/machine.log" "$OUT/machine.txt"

build() {
  # Fail fast (and never touch the environment) where a CUDA build cannot happen.
  $PY -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch has no CUDA: no CUDA build possible')" || return 2
  command -v nvcc > /dev/null || { echo "nvcc not on PATH"; return 2; }
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=${CUDA_HOME:-} MAX_JOBS=$MAX_JOBS"
  if [ "$DRY" = 1 ]; then
    echo "dry run: would run $PY -m pip install --no-deps --no-build-isolation --no-index -e ."
    return 0
  fi
  $PY -m pip install --no-deps --no-build-isolation --no-index -e . || return $?
  $PY -m ctrlaug.ops | tee "$OUT/status.json"
  # the CUDA backend must be there: later steps would only skip it
  $PY -c "import torch, ctrlaug.ops as o; import sys; sys.exit(0 if o.available('cuda', torch.device('cuda')) else 'cuda backend not available after the build')"
}
export -f build
run_step build 110 build

# Correctness on the GPU, CUDA backend first. -k picks the GPU backends' tests (the reference and
# cpp ones, and test_cuda_kernels' nvcc/host checks, run in CPU CI).
export CTRLAUG_TRITON_AUTOTUNE=0
pytest_step tests_cuda 60 tests/test_region_contrast.py tests/test_correspondence.py tests/test_cuda_kernels.py \
  -k "cuda and not coef_scale and not tensor_core" -rs --junitxml="$OUT/tests_cuda.xml"
pytest_step tests_triton 40 tests/test_region_contrast.py tests/test_correspondence.py tests/test_augment.py \
  -k "triton or gpu" -rs --junitxml="$OUT/tests_triton.xml"
unset CTRLAUG_TRITON_AUTOTUNE # the benchmarks autotune (a short list per D)

# Region-contrast ladder. K is chosen with -k on the harness's test ids
# (Q16384-K16384-D128-bfloat16, ...); CTRLAUG_BENCH_K says the same to a harness that reads it.
export CTRLAUG_BENCH_K=16384,131072
KSEL="(K16384 or K131072)"
bench_step bench_rc 115 bench/bench_region_contrast.py -k "$KSEL and not (cuda and float32)"
bench_step bench_rc_cuda_fp32 30 bench/bench_region_contrast.py -k "$KSEL and cuda and float32"
bench_step bench_corr 30 bench/bench_correspondence.py

if [ "$DRY" = 1 ]; then
  run_step step 60 "$PY" bench/bench_step.py --help
else
  run_step step 60 "$PY" bench/bench_step.py --preset gpu --json "$OUT/step.json"
fi

if [ -f bench/gpu_science.sh ]; then
  if [ "$DRY" = 1 ]; then
    run_step science 10 bash -n bench/gpu_science.sh
  else
    mkdir -p "$OUT/science"
    run_step science "$DEADLINE" env OUT="$OUT/science" bash bench/gpu_science.sh
  fi
fi

for j in bench_rc bench_rc_cuda_fp32 bench_corr; do
  if [ -s "$OUT/$j.json" ]; then
    $PY bench/summarize.py "$OUT/$j.json" > "$OUT/$j.md" 2>&1 && cat "$OUT/$j.md"
  fi
done
say "done"
write_summary true

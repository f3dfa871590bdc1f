#!/usr/bin/env bash
# The one prepared GPU check of the run-time half (issues #3 and #4), for the H100 test machine.
#
# Before calling the device tool, in the repository root of this machine:
#     mkdir -p .whl .data
#     cp -r ../shared/wheels/cuda13-cp312 .whl/             # pycuda + its pure-Python deps
#     mkdir -p .whl/py && cp .whl/theano_pymc-1.1.2-py3-none-any.whl .whl/lasagne-0.1-py3-none-any.whl \
#         .whl/filelock-*.whl .whl/tqdm-*.whl .whl/py/   # built by: pip wheel --no-deps theano-pymc==1.1.2 lasagne==0.1
#     cp -r ../shared/datasets/mnist .data/mnist
# then run it with the device tool:
#     command: "bash benchmarks/gpu_device_check.sh"   carry: [".whl", ".data"]
#     timeout_s: 600   (the script stops itself after BUDGET=540 s)
# (.whl/ and .data/ are git-ignored, hence carried.) Everything it writes goes to $OUT
# (at most 8 files come back): device_check.log (all output), env.txt,
# kernel_benchmark.json, kernel_benchmark.md, gpu_runtime_mnist.json, sanitizer.log.
#
# Each step has its own timeout, cut to what is left of BUDGET seconds (default 540), and
# a failing step does not stop the next ones. Steps, most valuable first: environment,
# install, selfcheck of the tensor-core kernels (issue #4: every variant and epilogue vs
# numpy), selfcheck of the 2016 kernels, compute-sanitizer memcheck + racecheck of the
# tensor-core kernels (cp.async pipeline), kernel benchmark (now with xnor_tc rows and
# batch 1/16/100 layer shapes), run-time MNIST command (benchmarks/gpu_runtime.py: theano,
# baseline, xnor, xnor_tc, cuBLAS FP16 via CuPy; batches 1, 16, 100, 10000), GPU tests
# (the command's tests too), compute-sanitizer of the
# 2016 kernels (memcheck, racecheck, initcheck, synccheck).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/bnn_gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
DEPS="${DEPS:-/tmp/bnn_deps}"
PY="${PYTHON:-python3}"
export PATH="$PATH:/usr/local/cuda/bin"
START=$(date +%s)
DEADLINE=$(( START + ${BUDGET:-540} ))

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log, never abort the script
    local name="$1" seconds="$2"
    shift 2
    local left=$(( DEADLINE - $(date +%s) - 5 ))
    if [ "$left" -lt 15 ]; then
        echo "=== $name: rc=skipped (budget spent)" | tee -a "$LOG"
        return 0
    fi
    [ "$seconds" -gt "$left" ] && seconds=$left
    echo "=== [$(( $(date +%s) - START ))s] $name (timeout ${seconds}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$seconds" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc$([ $rc -eq 124 ] && echo ' (TIMED OUT)')" | tee -a "$LOG"
    return 0
}

{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    nvidia-smi 2>&1 | head -15
    nvcc --version 2>&1 | tail -2
    command -v compute-sanitizer
    "$PY" -c "import sys, numpy; print(sys.version); print('numpy', numpy.__version__)"
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(cupy|numpy|scipy|torch|filelock|pytest) "
    git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"

# pycuda (and Theano/Lasagne, where carried) into a private folder; no network needed.
mkdir -p "$DEPS"
WHEELS=$(ls .whl/cuda13-cp312/*.whl .whl/py/*.whl 2>/dev/null)
if [ -n "$WHEELS" ]; then
    step install 60 "$PY" -m pip install -q --no-index --no-deps --target "$DEPS" $WHEELS
else
    echo "no wheels under .whl/: pycuda must already be installed" | tee -a "$LOG"
fi
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
step imports 45 "$PY" -c "
import kernels; print('gpu:', kernels.gpu_status())
import binary_net.gpu_runtime as g; print('theano:', g.THEANO_ERROR or 'ok')
import kernels.cublas"

step selfcheck-tc 90 "$PY" -m kernels.selfcheck --only tc
step selfcheck 60 "$PY" -m kernels.selfcheck --only paper
for tool in memcheck racecheck; do
    echo "--- compute-sanitizer --tool $tool (tensor-core kernels)" >>"$OUT/sanitizer.log"
    step "sanitizer-tc-$tool" 60 bash -c "compute-sanitizer --tool $tool --error-exitcode 99 \
        $PY -m kernels.selfcheck --only tc --quick >>'$OUT/sanitizer.log' 2>&1"
done
step benchmark 150 "$PY" -m kernels.benchmark --output "$OUT/kernel_benchmark.json" \
    --markdown "$OUT/kernel_benchmark.md"
step runtime-mnist 150 "$PY" benchmarks/gpu_runtime.py \
    --params results/mnist-3x1024-120ep/best_params.npz --data-dir .data/mnist \
    --random-shape 4096 --repeats 5 --theano-repeats 1 --kernels theano,baseline,xnor,xnor_tc \
    --batches 1,16,100,10000 --cublas-fp16 --output "$OUT/gpu_runtime_mnist.json"
# --noconftest: tests/conftest.py imports Theano, which the kernel tests do not need.
# The run-time tests use its lasagne_seed fixture (Theano works there through
# binary_net.compat: Python 3.12 + numpy 2 checked on the CPU, 118 passed).
step test-kernels 120 "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider tests/test_kernels.py
step test-gpu-runtime 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu_runtime.py
step test-kernels-tc 90 "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider \
    tests/test_kernels_tc.py -k gpu
for tool in memcheck racecheck initcheck synccheck; do
    echo "--- compute-sanitizer --tool $tool" >>"$OUT/sanitizer.log"
    step "sanitizer-$tool" 60 bash -c "compute-sanitizer --tool $tool --error-exitcode 99 \
        $PY -m kernels.selfcheck --only paper --quick >>'$OUT/sanitizer.log' 2>&1"
done

echo "=== done in $(( $(date +%s) - START ))s" | tee -a "$LOG"
grep -E "^=== .*rc=" "$LOG"

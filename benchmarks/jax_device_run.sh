#!/usr/bin/env bash
# The GPU session's checks for --backend jax, run from the repository root on the
# H100 machine (Python 3.12, numpy 2, jax with CUDA; no network):
#
#   bash benchmarks/jax_device_run.sh [all|speed|train]     (default: all)
#
# Needs, carried as ignored folders: .whl/ (theano-pymc, Lasagne, filelock, tqdm
# wheels) and .data/mnist/ (the four MNIST .gz files). Writes into $OUT:
#   env.txt                       versions, the device JAX sees
#   mlp-speed/                    (a) mnist.py, paper MLP 784-4096x3-10, batch 100, 2 epochs
#   cifar10_speed.json            (b) CIFAR-10 ConvNet, batch 50, random data, steps timed
#   mnist-paper/                  (c) the paper's MNIST recipe for as many epochs as fit
#                                 (log.jsonl, result.json, config.json, curves PNG;
#                                 checkpoint/best_params are deleted: too large to copy back)
# Every step has its own timeout and a failure does not stop the next one.
# TOTAL_BUDGET (seconds, default 540) bounds the whole script in "all" mode; the
# training run gets what the first two steps leave, minus a margin.
# EPOCHS=N forces the number of epochs of (c). For a dry run on a CPU:
#   MNIST_ARGS="--num-units 128 --train-size 2000" CIFAR_ARGS="--steps 3" ...
set -u
cd "$(dirname "$0")/.."
MODE="${1:-all}"
OUT="${OUT:-$PWD/jax-device-out}"
mkdir -p "$OUT"
START=$(date +%s)
TOTAL_BUDGET="${TOTAL_BUDGET:-540}"
PY="${PYTHON:-python3}"
DEPS="${DEPS:-/tmp/binary-net-deps}"
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed)s] $*" | tee -a "$OUT/steps.txt"; }

say "install theano-pymc, Lasagne (and filelock, tqdm) from .whl/ into $DEPS"
mkdir -p "$DEPS"
timeout 120 "$PY" -m pip install -q --no-index --no-deps --target "$DEPS" .whl/*.whl \
    || say "pip install failed (rc $?)"
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

say "environment"
timeout 120 "$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import sys, numpy, jax
import binary_net.compat, theano, lasagne
print("python", sys.version.split()[0], "numpy", numpy.__version__, "jax", jax.__version__)
print("theano", theano.__version__, "cxx", repr(theano.config.cxx), "floatX", theano.config.floatX)
print("devices", jax.devices())
EOF
cat "$OUT/env.txt"

EPOCH_S=""
if [ "$MODE" = all ] || [ "$MODE" = speed ]; then
    say "(a) MNIST MLP 784-4096x3-10, batch 100: 2 epochs of mnist.py --backend jax"
    rm -rf "$OUT/mlp-speed"
    timeout 180 "$PY" mnist.py --backend jax --data-dir .data/mnist --epochs 2 \
        --checkpoint-every 1000 --no-progress --output-dir "$OUT/mlp-speed" ${MNIST_ARGS:-} \
        2>&1 | tail -n 5 | tee -a "$OUT/steps.txt" || true
    rm -f "$OUT/mlp-speed/checkpoint.npz" "$OUT/mlp-speed/best_params.npz"
    if [ -f "$OUT/mlp-speed/log.jsonl" ]; then
        # epoch 2: no compilation in it (validation and test included)
        EPOCH_S=$("$PY" -c "import json; rows=[json.loads(l) for l in open('$OUT/mlp-speed/log.jsonl')]; print(rows[-1]['seconds'])")
        say "MLP seconds per epoch (epoch 2, incl. validation/test): $EPOCH_S"
    fi

    say "(b) CIFAR-10 ConvNet, batch 50, random data: 300 steps timed after a compiling call"
    timeout 150 "$PY" benchmarks/jax_train_speed.py --model cifar10 --batch-size 50 \
        --steps 300 --backends jax --output "$OUT/cifar10_speed.json" ${CIFAR_ARGS:-} \
        2>&1 | tail -n 3 | tee -a "$OUT/steps.txt" || say "(b) failed or timed out"
fi

if [ "$MODE" = all ] || [ "$MODE" = train ]; then
    LEFT=$(( TOTAL_BUDGET - $(elapsed) - 60 ))
    if [ -n "${EPOCHS:-}" ]; then
        RUN_EPOCHS="$EPOCHS"
    elif [ -n "$EPOCH_S" ]; then
        # ~45 s for compiling and the final files, the rest for epochs (at most 1000)
        RUN_EPOCHS=$("$PY" -c "print(max(1, min(1000, int(($LEFT - 45) / $EPOCH_S))))")
    else
        RUN_EPOCHS=200
    fi
    say "(c) paper MNIST recipe for $RUN_EPOCHS epochs (LR 0.003 -> 3e-7 over them), ${LEFT}s left"
    rm -rf "$OUT/mnist-paper"
    timeout $(( LEFT > 60 ? LEFT : 60 )) "$PY" mnist.py --backend jax --data-dir .data/mnist \
        --epochs "$RUN_EPOCHS" --checkpoint-every 100000 --no-progress \
        --output-dir "$OUT/mnist-paper" ${MNIST_ARGS:-} > "$OUT/mnist-paper.txt" 2>&1
    say "(c) exit status $?"
    tail -n 3 "$OUT/mnist-paper.txt" | tee -a "$OUT/steps.txt"
    rm -f "$OUT/mnist-paper/checkpoint.npz" "$OUT/mnist-paper/best_params.npz"
    if [ -f "$OUT/mnist-paper/log.jsonl" ]; then
        timeout 60 "$PY" -m binary_net.report "$OUT/mnist-paper" --plots "$OUT" \
            > "$OUT/report.txt" 2>&1 || say "curves not drawn (matplotlib missing?)"
    fi
fi
say "done; files in $OUT"
ls -la "$OUT"

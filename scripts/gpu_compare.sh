#!/usr/bin/env bash
# gpu_compare.sh — run the same-budget training comparison on one GPU machine (no network).
#
# usage: scripts/gpu_compare.sh ITERS TIMEOUT_S SCALE MODEL [MODEL ...]
#
# Runs every MODEL at SCALE concurrently with traiNNer-redux's real train.py (through the run
# harness in .ref/tools: gpu_train.sh + train_shim.py), all with the config of
# `scripts/compare_training.py configs` (identical recipe). Expects, in the repository root:
#   .ref/hr/{T91,BSDS200,Set5}  HR images (training pairs and Set5 validation pairs are made
#                               here with MATLAB-compatible bicubic, hybridmoe make-pairs)
#   .ref/trainner-src, .whl-tr  traiNNer-redux source and its wheels (WHEELS=DIR names another
#                               wheel folder); .ref/tools the harness
# Writes to $OUT: every run's logs, summary and the results table (logs_x<S>.tar.gz) and the
# final EMA checkpoints of all runs (ckpt_x<S>.tar.partNN; `cat` the parts to untar).
set -u
ITERS=$1; TIMEOUT=$2; SCALE=$3; shift 3; MODELS=("$@")
OUT=${OUT:-./compare-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
[[ ${SKIP_WHEELS:-0} == 1 ]] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site-tr ${WHEELS:-.whl-tr}/*.whl 2>&1 | grep -v "root" || true
[[ ${SKIP_WHEELS:-0} == 1 ]] || export PYTHONPATH=/tmp/site-tr
# this checkout's package and single-file modules (python -m hybridmoe ...)
export PYTHONPATH="$PWD:$PWD/traiNNer/archs:$PWD/traiNNer/losses${PYTHONPATH:+:$PYTHONPATH}"

D=/tmp/cmpdata/x$SCALE
LQ=$("$PY" -c "import sys; sys.path.insert(0, 'scripts'); import compare_training as c; print(c.LQ_SIZE[$SCALE])")
"$PY" -m hybridmoe make-pairs .ref/hr/T91 .ref/hr/BSDS200 --out "$D/train" --scale "$SCALE" --overwrite \
  --min-lr-size "$LQ" || exit 2
"$PY" -m hybridmoe make-pairs .ref/hr/Set5 --out "$D/val" --scale "$SCALE" --min-lr-size 1 --overwrite || exit 2
"$PY" scripts/compare_training.py configs --models "${MODELS[@]}" --scales "$SCALE" \
  --iters "$ITERS" --out /tmp/cmpcfg --overwrite > /dev/null || exit 2
P=/tmp/cmpplugin; mkdir -p $P/traiNNer/archs $P/traiNNer/losses
cp traiNNer/archs/hybridmoe_arch.py $P/traiNNer/archs/
cp traiNNer/losses/hybridmoe_loss.py $P/traiNNer/losses/

R=/tmp/cmpruns; mkdir -p $R
for m in "${MODELS[@]}"; do
  n=cmp_${m}_x$SCALE
  bash .ref/tools/gpu_train.sh --python "$PY" --wheels none --plugin $P --data "$D" --work /tmp/cmpwork/$n \
    --out $R/$n --timeout "$TIMEOUT" /tmp/cmpcfg/$n.yml > $R/$n.runner.txt 2>&1 &
done
wait
"$PY" scripts/compare_training.py collect $R --json $R/compare_x$SCALE.json --overwrite | tee $R/compare_x$SCALE.txt
tar -czf "$OUT/logs_x$SCALE.tar.gz" -C $R --exclude='*.safetensors' . 2>/dev/null
# the final EMA checkpoint of every run, in one archive (split if over 15 MiB: the device
# tool returns files of at most 16 MiB)
CK=/tmp/cmpckpt_x$SCALE; mkdir -p $CK
for m in "${MODELS[@]}"; do
  n=cmp_${m}_x$SCALE
  f=/tmp/cmpwork/$n/trainner/experiments/$n/models/net_g_ema_latest.safetensors
  [[ -f $f ]] && cp "$f" "$CK/$n.safetensors"
done
tar -cf - -C $CK . | split -b 15m -d - "$OUT/ckpt_x$SCALE.tar.part"
ls -la "$OUT"

#!/usr/bin/env bash
# gpu_sweep.sh — one device call of a side-by-side training sweep (scripts/sweep.py).
# Usage (from the repository root, on the GPU machine):
#   scripts/gpu_sweep.sh SCALE ITERS DEADLINE_S RUNS_DIR CONFIG...
# Env: SRC (HR source folders, default ".ref/src/T91 .ref/src/BSDS200"), DATA (pairs folder,
# default /tmp/pairs_x$SCALE, made with make_pairs.py if missing), WHEELS (default .whl).
# Training state stays in RUNS_DIR (git-ignored; a warm machine keeps it for the next call, which
# resumes); the EMA weights (fp16) and logs of every run are packed into $OUT.
set -uo pipefail
SCALE=$1 ITERS=$2 DEADLINE=$3 RUNS=$4; shift 4
WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# this checkout's package and single-file modules (python -m hybridmoe ...)
export PYTHONPATH="$PWD:$PWD/traiNNer/archs:$PWD/traiNNer/losses${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DATA=${DATA:-/tmp/pairs_x$SCALE}
if [[ ! -d $DATA/hr ]]; then
  python3 -m hybridmoe make-pairs ${SRC:-.ref/src/T91 .ref/src/BSDS200} --out "$DATA" --scale "$SCALE" | tail -1
fi
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
python3 scripts/sweep.py train --configs "$@" --scale "$SCALE" --iters "$ITERS" --data "$DATA" \
  --out "$RUNS" --deadline-s "$DEADLINE"
rc=$?
if [[ -n ${OUT:-} ]]; then
  python3 scripts/sweep.py pack --runs "$RUNS" --out "$OUT" || true
fi
for f in "$RUNS"/*/log.jsonl; do echo "$(dirname "$f" | xargs basename) $(tail -1 "$f")"; done
exit $rc

#!/usr/bin/env bash
# gpu_bg.sh — side-by-side training runs that outlive one device call (scripts/sweep.py).
# Source-free: every subcommand sets up its own environment. From the repository root:
#   scripts/gpu_bg.sh pairs SCALE OUT SRC...        MATLAB-bicubic pairs (skipped if OUT/hr exists)
#   scripts/gpu_bg.sh pairs-bg SCALE OUT SRC        the same in the background, from a copy of SRC
#                                                    (a carried folder is gone in the next call);
#                                                    OUT.done appears when OUT is complete: upload
#                                                    one slice per call and keep going
#   scripts/gpu_bg.sh wait-pairs OUT...             block until every OUT.done exists
#   scripts/gpu_bg.sh start GROUP SCALE ITERS SEED DATA[,DATA...] CONFIG...
#                                                    train in the background, own process session,
#                                                    state in $RUNS/GROUP (default RUNS=/tmp/runs);
#                                                    DEGRADE=PRESET: x1 restoration (--degrade);
#                                                    WARMUP=N: lr warm-up; LR=X: peak rate;
#                                                    VAL=HR_DIR: validation curve; CROP=N: LR
#                                                    crop side; INIT=DIR GAN=LPIPS_VGG: GAN
#                                                    fine-tuning from the runs in DIR;
#                                                    INIT_CONFIG=C: from C's run there;
#                                                    ROUTER_LR=M: MoE routers at M x the rate
#   scripts/gpu_bg.sh wait SECONDS                   print progress every minute; return within
#                                                    5 s of the last run's end (TRAINING.md §5b)
#                                                    with where every run stands and each
#                                                    group's train.log (exits, refusals)
#   scripts/gpu_bg.sh py ARGS...                    python3 ARGS in this environment (e.g. a bench)
#   scripts/gpu_bg.sh pack [--with-state]            EMA weights + logs of all groups into $OUT
#                                                    (with the training states: resumable on
#                                                    a fresh machine, ~16 bytes per parameter)
# Background jobs (pairs-bg, start) run from a copy of the code in /tmp/gpu_bg_code.*: the next
# device call re-sends the working tree, and a worker process that imports the project while
# its files are being replaced fails (ModuleNotFoundError). Their folder arguments are made
# absolute first, so relative paths keep meaning the repository's.
# HYBRIDMOE_COMMIT: the commit recorded in the records (a copied checkout's git metadata can
# be stale).
set -uo pipefail
RUNS=${RUNS:-/tmp/runs}
WHEELS=${WHEELS:-.whl}
if [[ ! -d /tmp/site ]] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # into a new folder, moved into place when whole: a failed install is tried again next call
  rm -rf /tmp/site.part
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site.part \
    "$WHEELS"/*.whl && mv /tmp/site.part /tmp/site
fi
export PYTHONPATH="$PWD:$PWD/traiNNer/archs:$PWD/traiNNer/losses:/tmp/site"
export PYTHONUNBUFFERED=1
# a copy of the code for one background job; prints its folder
snapshot() {
  local dir
  dir=$(mktemp -d /tmp/gpu_bg_code.XXXXXX) && cp -r hybridmoe traiNNer scripts "$dir"/ \
    && echo "$dir"
}
code_path() { echo "$1:$1/traiNNer/archs:$1/traiNNer/losses:/tmp/site"; }
# the commit the records name, for the jobs that run from a copy (no git metadata there)
[[ -n ${HYBRIDMOE_COMMIT:-} ]] || export HYBRIDMOE_COMMIT=$(git rev-parse HEAD 2>/dev/null)
cmd=$1; shift
case $cmd in
  pairs)
    scale=$1 out=$2; shift 2
    [[ -d $out/hr ]] || python3 -m hybridmoe make-pairs "$@" --out "$out" --scale "$scale" | tail -1 ;;
  pairs-bg)
    scale=$1 out=$(realpath -m -- "$2") src=$3
    [[ -d $src ]] || { echo "pairs-bg: $src is not a folder" >&2; exit 2; }
    rm -rf "$out.src" "$out.done" && cp -r "$src" "$out.src" || exit 2
    code=$(snapshot) || { echo "pairs-bg: could not copy the code to /tmp" >&2; exit 2; }
    (cd "$code" && PYTHONPATH=$(code_path "$code") setsid nohup bash -c "python3 -m hybridmoe \
      make-pairs '$out.src' --out '$out' --scale $scale --overwrite --workers 4 >'$out.log' 2>&1 \
      && touch '$out.done'" </dev/null >/dev/null 2>&1 &)
    n=$(find "$out.src" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' \) | wc -l)
    echo "pairs-bg: $n images of $src -> $out (log $out.log)" ;;
  wait-pairs)
    for out in "$@"; do
      out=$(realpath -m -- "$out") idle=0
      until [[ -f $out.done ]]; do
        if pgrep -f "make-pairs $out.src" >/dev/null; then idle=0; else idle=$((idle + 1)); fi
        ((idle < 3)) || { echo "wait-pairs: $out is not being made; see $out.log" >&2; exit 2; }
        sleep 2
      done
      tail -1 "$out.log"
    done ;;
  start)
    group=$1 scale=$2 iters=$3 seed=$4 data=$5; shift 5
    runs=$(realpath -m -- "$RUNS")
    mkdir -p "$runs/$group"
    IFS=, read -ra dirs <<<"$data"
    for i in "${!dirs[@]}"; do dirs[i]=$(realpath -m -- "${dirs[i]}"); done
    [[ -n ${VAL:-} ]] && VAL=$(realpath -m -- "$VAL")
    [[ -n ${INIT:-} ]] && INIT=$(realpath -m -- "$INIT")
    code=$(snapshot) || { echo "start: could not copy the code to /tmp" >&2; exit 2; }
    (cd "$code" && PYTHONPATH=$(code_path "$code") setsid nohup python3 scripts/sweep.py train \
      --configs "$@" --scale "$scale" --iters "$iters" \
      --seed "$seed" --data "${dirs[@]}" --out "$runs/$group" ${DEGRADE:+--degrade "$DEGRADE"} \
      ${WARMUP:+--warmup "$WARMUP"} ${LR:+--lr "$LR"} ${VAL:+--val "$VAL"} \
      ${CROP:+--crop "$CROP"} ${INIT:+--init "$INIT"} ${ROUTER_LR:+--router-lr-mult "$ROUTER_LR"} \
      ${INIT_CONFIG:+--init-config "$INIT_CONFIG"} ${GAN:+--gan "$GAN"} \
      >>"$runs/$group/train.log" 2>&1 &)
    echo "started $group: $*" ;;
  wait)
    # polls every 5 s (a finished sweep ends the wait within seconds), reports every 60 s
    progress() {
      for f in "$RUNS"/*/*/log.jsonl; do
        [[ -f $f ]] && echo "$(basename "$(dirname "$(dirname "$f")")")/$(basename "$(dirname "$f")") $(tail -1 "$f" | cut -c1-70)"
      done
    }
    end=$((SECONDS + $1)) next=$((SECONDS + 60))
    while ((SECONDS < end)) && pgrep -f "^python3 scripts/sweep.py train" >/dev/null; do
      sleep $((end - SECONDS < 5 ? end - SECONDS : 5))
      ((SECONDS >= next && SECONDS < end)) || continue  # the deadline's report is below
      next=$((SECONDS + 60))
      echo "--- ${SECONDS}s $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
      progress
    done
    # where the runs stand, and what each group's sweep said: a run's exit status, or why
    # a start was refused or a run failed (RUNS/GROUP/train.log, which nothing returns)
    state="no sweep running"
    pgrep -f "^python3 scripts/sweep.py train" >/dev/null \
      && state="runs still training, $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
    echo "=== ${SECONDS}s: $state"
    progress
    for f in "$RUNS"/*/train.log; do
      [[ -s $f ]] && tail -n 20 "$f" | sed "s|^|$(basename "$(dirname "$f")"): |"
    done
    compgen -G "$RUNS/*/*/log.jsonl" >/dev/null || compgen -G "$RUNS/*/train.log" >/dev/null \
      || echo "wait: no runs under $RUNS (none started, or a fresh machine)" ;;
  py) python3 "$@" ;;
  pack)
    python3 scripts/sweep.py pack --runs "$RUNS"/*/ --out "$OUT" "$@" ;;
  *) echo "unknown subcommand $cmd" >&2; exit 2 ;;
esac
